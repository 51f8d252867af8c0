"""`ukcancel run`: every part of the service on one host, with one set of settings.

The API (gunicorn, as `ukcancel serve` runs it), the Celery workers and the stream consumer are
started as child processes of this one, from the same environment, so they cannot disagree on a
setting; with `--simulator` the UKSSDC simulator too, and every worker is pointed at it. Ctrl-C
or SIGTERM stops them all (workers finish their running calls); if one part exits on its own the
others are stopped and the exit status is 1. For trials and small facilities: larger ones run the
same parts under Compose, systemd or Kubernetes (`ops/`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import click

from ukcancel.cli.config import load_settings

STOP_SECONDS = 60.0  # as long as Compose gives a worker to finish its calls


@dataclass
class Part:
    label: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ukcancel(*args: str) -> list[str]:
    return [sys.executable, "-m", "ukcancel.cli", *args]


def _readiness(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


@click.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the API listens on.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="The API's port [default: the port of UKCANCEL_API_URL, where the client commands look: 8000].")
@click.option("--api-workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes of the API.")
@click.option("--workers", "worker_count", default=1, show_default=True, type=click.IntRange(1, 32),
              help="Celery worker processes (`ukcancel worker`), each with UKCANCEL_WORKER_CONCURRENCY slots.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True,
              help="The Celery workers' pool.")
@click.option("--simulator", "with_simulator", is_flag=True,
              help="Also run the UKSSDC simulator and send every UKSSDC call to it (a trial: the UKSSDC is never called).")
def run(host: str, port: int | None, api_workers: int, worker_count: int, pool: str, with_simulator: bool) -> None:
    """Run the API, the workers and the stream consumer together (needs REDIS_URL); stop them together."""
    settings = load_settings()
    if settings.embedded:
        raise click.UsageError("`ukcancel run` needs REDIS_URL (e.g. redis://127.0.0.1:6379/0); without Redis, "
                               "`ukcancel serve --simulator` runs everything in one process with nothing kept")
    if port is None:
        port = urlsplit(settings.api_url).port or 8000
    environment = dict(os.environ)
    parts: list[Part] = []
    if with_simulator:
        simulator_port = _free_port()
        environment["UKSSDC_BASE_URL"] = f"http://127.0.0.1:{simulator_port}"
        parts.append(Part("simulator", _ukcancel("simulator", "--port", str(simulator_port))))
    parts.append(Part("api", _ukcancel("serve", "--host", host, "--port", str(port), "--workers", str(api_workers))))
    hostname = socket.gethostname()
    for index in range(1, worker_count + 1):
        # Each worker its own scrape port (the setting's port, then the next ones), as the systemd units do.
        ports = {"UKCANCEL_WORKER_METRICS_PORT": str(settings.worker_metrics_port + index - 1)} \
            if settings.worker_metrics_port else None
        parts.append(Part(f"worker {index}", _ukcancel("worker", f"--pool={pool}", "-n", f"worker{index}@{hostname}"),
                          extra_env=ports))
    parts.append(Part("stream consumer", _ukcancel("stream-consumer", "--name", f"consumer-{hostname}")))

    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    base_url = environment.get("UKSSDC_BASE_URL", settings.ukssdc_base_url)
    click.echo(f"UKSSDC base URL: {base_url}" + (" (the simulator; the UKSSDC is never called)" if with_simulator else ""))
    for part in parts:
        # Own process group: a Ctrl-C at the terminal reaches this process only, which stops the
        # parts in order (a worker's warm shutdown) rather than all at once.
        part.process = subprocess.Popen(part.argv, env={**environment, **(part.extra_env or {})}, start_new_session=True,
                                        preexec_fn=_stop_with_parent)
        click.echo(f"started {part.label} (pid {part.process.pid})")
    api_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    exit_code = _watch(parts, stopping, f"{api_url}/readyz", api_url)
    _stop(parts)
    sys.exit(exit_code)


def _stop_with_parent() -> None:
    """In the child, before it runs: SIGTERM when `ukcancel run` dies, even by SIGKILL (Linux), so
    no part outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a part may outlive a killed `ukcancel run`
        pass


def _watch(parts: list[Part], stopping: threading.Event, readyz: str, api_url: str) -> int:
    """Until a stop is asked (0) or a part exits on its own (1); says once when everything is up."""
    announced = False
    while not stopping.is_set():
        for part in parts:
            assert part.process is not None
            code = part.process.poll()
            if code is not None and not stopping.is_set():
                click.echo(f"Error: the {part.label} exited (status {code}); stopping the other parts.", err=True)
                return 1
        if not announced:
            body = _readiness(readyz)
            checks = (body or {}).get("checks", {})
            if body and body.get("status") == "ok" and isinstance(checks.get("stream_consumers"), int):
                announced = True
                click.echo(f"ready: API on {api_url} (docs {api_url}/docs), {checks['workers']} worker(s), "
                           f"{checks['stream_consumers']} stream consumer(s); Ctrl-C stops them all")
                for problem in body.get("problems", []):
                    click.echo(f"WARNING: {problem}", err=True)
        stopping.wait(0.5)
    return 0


def _stop(parts: list[Part]) -> None:
    """SIGTERM to every part (API and stream consumer first, workers finish their calls), then wait;
    a part still running after `STOP_SECONDS` is killed."""
    for part in parts:
        if part.process is not None and part.process.poll() is None:
            part.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for part in parts:
        if part.process is None:
            continue
        try:
            part.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            click.echo(f"the {part.label} did not stop in {STOP_SECONDS:g} s: killed", err=True)
            part.process.kill()
            part.process.wait()
    click.echo("stopped")
