"""A sensor: runs for good, writes one event per line to stdout.

Attune gives it its parameters as JSON in ATTUNE_SENSOR_PARAMETERS and restarts it (with backoff)
if it exits. Anything on stderr is logged by the worker and the end of it kept as the sensor's last
error when it exits.
"""
import json
import os
import shutil
import socket
import sys
import time

params = json.loads(os.environ.get("ATTUNE_SENSOR_PARAMETERS") or "{}")
path = params.get("path", "/")
interval = float(params.get("interval", 5))
host = socket.gethostname()

print(f"watching {path} every {interval:g}s", file=sys.stderr, flush=True)
while True:
    usage = shutil.disk_usage(path)
    used = round(100.0 * usage.used / usage.total, 1)
    event = {
        "trigger": "examples.disk_alert",
        "payload": {"host": host, "used": used, "path": path, "sensor": "disk_watch"},
    }
    print(json.dumps(event), flush=True)
    time.sleep(interval)
