"""Celery side of attune-bench: start N prefork worker processes, submit the workloads, wait for
every result, and print {"version", "noop_per_sec", "shell_per_sec"} as one JSON line."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import celery
import redis
from celery.result import ResultSet

import tasks


def throughput(task, n, *args):
    start = time.perf_counter()
    results = [task.apply_async(args=args) for _ in range(n)]
    ResultSet(results).join_native(timeout=600, propagate=True)
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--noop", type=int, default=5000)
    p.add_argument("--shell", type=int, default=2000)
    a = p.parse_args()
    redis.Redis(host="127.0.0.1", port=6379, db=7).flushdb()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-c", str(a.workers), "--pool", "prefork",
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat", "-O", "fair"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
        start_new_session=True,
    )
    try:
        tasks.noop.delay().get(timeout=60)  # the worker is up
        noop = throughput(tasks.noop, a.noop)
        shell = throughput(tasks.echo, a.shell, "hello")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
    print(json.dumps({"version": celery.__version__, "noop_per_sec": noop, "shell_per_sec": shell}))


if __name__ == "__main__":
    main()
