"""The benchmark's tasks for Procrastinate: a no-op and `sh -c 'echo hello'`, as async tasks (the
worker's own event loop runs them, as Attune's builtins run inside its worker)."""
import asyncio
import os

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["PROCRASTINATE_DSN"]))


@app.task(name="noop")
async def noop():
    return None


@app.task(name="echo")
async def echo(message):
    p = await asyncio.create_subprocess_exec("sh", "-c", f"echo {message}", stdout=asyncio.subprocess.PIPE)
    await p.communicate()
