"""`ukcancel stream-consumer`: submit the cancel commands pipelines XADD to ``ukcancel:commands``."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from ukcancel.cli.config import load_settings


@click.command("stream-consumer")
@click.option("--name", default=None,
              help="Consumer name in the group (default: host-pid). Keep it stable across restarts so a "
                   "restarted consumer finishes its own unacknowledged entries at once.")
@click.option("--min-idle-seconds", default=60.0, show_default=True, type=click.FloatRange(0, 86400),
              help="Take over entries another consumer has left unacknowledged this long (it died).")
@click.option("--block-seconds", default=2.0, show_default=True, type=click.FloatRange(0.01, 5),
              help="How long one read waits for new entries (at most 5 s, so a waiting consumer still "
                   "sends its heartbeat).")
def stream_consumer(name: str | None, min_idle_seconds: float, block_seconds: float) -> None:
    """Read ukcancel:commands (group "ukcancel") and enqueue each valid entry (needs REDIS_URL)."""
    settings = load_settings()
    if settings.embedded:
        raise click.UsageError("a stand-alone stream consumer needs REDIS_URL (`ukcancel serve` runs one embedded)")
    from ukcancel import logs
    from ukcancel.assemble import create_runtime
    from ukcancel.cli.startup import prepare_store
    from ukcancel.stream import CommandStreamConsumer

    logs.configure(settings)
    runtime = create_runtime(settings)
    prepare_store(runtime.connection)
    consumer = CommandStreamConsumer(
        runtime, name, block_ms=int(block_seconds * 1000), min_idle_ms=int(min_idle_seconds * 1000)
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()  # finish the entry in hand, then leave

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    click.echo(f"stream consumer {consumer.name} reading ukcancel:commands", err=True)
    consumer.run(stop)
