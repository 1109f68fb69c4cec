"""Celery tasks equivalent to Attune's core.noop (builtin) and core.echo (a shell action)."""
import subprocess

from celery import Celery

app = Celery("attune_bench", broker="redis://127.0.0.1:6379/7", backend="redis://127.0.0.1:6379/7")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=16,
    result_expires=600,
    broker_connection_retry_on_startup=True,
)


@app.task
def noop():
    return None


@app.task
def echo(message):
    out = subprocess.run(["sh", "-c", f"echo {message}"], capture_output=True, text=True, check=True)
    return out.stdout
