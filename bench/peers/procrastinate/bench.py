"""Procrastinate side of attune-bench: a database of its own on the benchmark's PostgreSQL, N worker
processes, the no-op and shell workloads deferred by 16 concurrent clients (as Attune's are
submitted), each measured from the first defer until every job has finished. Prints
{"version", "noop_per_sec", "shell_per_sec"} as one JSON line."""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))


async def throughput(tasks, dsn, task, n, kwargs, workers):
    sem = asyncio.Semaphore(16)

    async def one():
        async with sem:
            await task.defer_async(**kwargs)

    async with tasks.app.open_async():
        t0 = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(n)])
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            while True:
                cur = await c.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND status IN ('succeeded', 'failed')",
                    (task.name,),
                )
                (done,) = await cur.fetchone()
                if done >= n:
                    break
                if any(w.poll() is not None for w in workers) or time.perf_counter() - t0 > 600:
                    raise SystemExit(f"procrastinate workers died or took over 600 s ({done} of {n} done)")
                await asyncio.sleep(0.005)
        return n / (time.perf_counter() - t0)


async def apply_schema(tasks):
    async with tasks.app.open_async():
        await tasks.app.schema_manager.apply_schema_async()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--noop", type=int, default=5000)
    p.add_argument("--shell", type=int, default=2000)
    a = p.parse_args()
    pg = a.pg.replace("postgres://", "postgresql://", 1).rstrip("/")
    db = f"attune_bench_procrastinate_{os.getpid()}"
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    dsn = f"{pg}/{db}"
    os.environ["PROCRASTINATE_DSN"] = dsn
    workers = []
    try:
        import tasks

        asyncio.run(apply_schema(tasks))
        cli = os.path.join(os.path.dirname(sys.executable), "procrastinate")
        for _ in range(a.workers):
            workers.append(subprocess.Popen(
                [cli, "--app=tasks.app", "--log-level=warning", "worker", f"--concurrency={a.concurrency}"],
                cwd=HERE, env={**os.environ, "PYTHONPATH": HERE}, stdout=subprocess.DEVNULL, stderr=sys.stderr,
                start_new_session=True,
            ))
        asyncio.run(throughput(tasks, dsn, tasks.noop, 50, {}, workers))  # the workers are up
        noop = asyncio.run(throughput(tasks, dsn, tasks.noop, a.noop, {}, workers))
        shell = asyncio.run(throughput(tasks, dsn, tasks.echo, a.shell, {"message": "hello"}, workers))
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    print(json.dumps({"version": version("procrastinate"), "noop_per_sec": noop, "shell_per_sec": shell}))


if __name__ == "__main__":
    main()
