"""Celery side of attune-bench: start N prefork worker processes, submit the workloads, wait for
every result, and print {"version", "noop_per_sec", "shell_per_sec", "chain3_ms", "chord_per_sec"}
as one JSON line (the canvas rows are the peers of Attune's workflow rows)."""
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


def percentiles(ms):
    ms = sorted(ms)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
    return [pick(0.50), pick(0.95), pick(0.99)]


def chain3(n):
    """chain(noop, noop, noop), one at a time: submit -> the last task's result, in ms."""
    ms = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        celery.chain(tasks.noop.si(), tasks.noop.si(), tasks.noop.si()).apply_async().get(timeout=60)
        if i >= 10:
            ms.append((time.perf_counter() - t0) * 1000.0)
    return percentiles(ms)


def chord(n):
    """chord(group(noop x n), noop): items per second, submit -> the callback's result."""
    t0 = time.perf_counter()
    celery.chord(tasks.noop.si() for _ in range(n))(tasks.noop.si()).get(timeout=600)
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--noop", type=int, default=5000)
    p.add_argument("--shell", type=int, default=2000)
    p.add_argument("--chains", type=int, default=100)
    p.add_argument("--chord", type=int, default=1000)
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
        chains = chain3(a.chains)
        chord_rate = chord(a.chord)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
    print(json.dumps({"version": celery.__version__, "noop_per_sec": noop, "shell_per_sec": shell,
                      "chain3_ms": chains, "chord_per_sec": chord_rate}))


if __name__ == "__main__":
    main()
