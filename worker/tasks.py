"""The Celery tasks: thin glue between a broker message and a `CancellationRun`."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery, Task
from kombu.exceptions import KombuError

from ukcancel.worker.cancellation import CancellationRun, Reschedule
from ukcancel.worker.rate_limit import FleetGate
from ukcancel.worker.ukssdc import UkssdcClient

log = logging.getLogger(__name__)

RUN_NEXT = "ukcancel.run_next"
FAN_OUT = "ukcancel.fan_out"
# Above this many turns, the API sends one fan-out message and a worker sends the turns, so
# accepting a 10,000-item batch costs the API one broker round trip.
FAN_OUT_THRESHOLD = 16
# Turns per batched publish (see `send_turns`).
TURN_BATCH = 1000


@functools.cache
def _parts(app: Celery) -> tuple[FleetGate, UkssdcClient]:
    """The gate and a per-process HTTP session, built lazily so prefork children build their own."""
    settings = app.runtime.settings
    client = UkssdcClient(
        settings.ukssdc_base_url,
        settings.ukssdc_api_version,
        settings.ukssdc_connect_timeout_seconds,
        settings.ukssdc_timeout_seconds,
    )
    return app.runtime.gate, client


def register_tasks(app: Celery) -> None:
    # shared=False: a task is bound to this app's runtime; Celery would otherwise add it to every
    # app the process creates later, whose worker would then run it against the wrong store.
    @app.task(bind=True, name=RUN_NEXT, max_retries=None, acks_late=True, reject_on_worker_lost=True, shared=False)
    def run_next(self: Task) -> dict[str, Any]:
        """Take a turn: perform the next waiting command (or resume the one this task holds)."""
        gate, client = _parts(app)
        try:
            result = CancellationRun(app.runtime, self.request.id, gate, client).run()
        except Reschedule as later:
            log.info("task %s rescheduled in %.2f s: %s", self.request.id, later.countdown, later.reason)
            # Celery's retry re-sends this message with the same task id, so the claim carries over.
            raise self.retry(countdown=later.countdown, max_retries=None) from None
        return {"command": result.command_id, "state": result.state}

    @app.task(bind=True, name=FAN_OUT, acks_late=True, reject_on_worker_lost=True, shared=False)
    def fan_out(self: Task, count: int) -> int:
        """Send `count` turns. A redelivery may send extra turns; a turn with nothing to do is a no-op."""
        send_turns(app, count)
        return count

    def dispatch(count: int) -> None:
        if count <= 0:
            return
        if count > FAN_OUT_THRESHOLD:
            app.send_task(FAN_OUT, args=[count])
        else:
            send_turns(app, count)

    app.runtime.queue.dispatch = dispatch


def send_turns(app: Celery, count: int) -> None:
    """Send `count` turns through one producer.

    Where the transport batches publishes (kombu >= 5.7 on Redis) they go `TURN_BATCH` to a round
    trip instead of one each. A batch that fails is sent again one message at a time, with Celery's
    publish retries: its delivery is uncertain, and a turn sent twice only finds nothing to do,
    while a lost turn would leave a command waiting.
    """
    with app.producer_or_acquire() as producer:
        batch = getattr(producer, "batch", None)
        sent = 0
        while sent < count:
            chunk = min(TURN_BATCH, count - sent)
            if batch is not None and chunk > 1:
                try:
                    with batch(max_size=chunk):
                        for _ in range(chunk):
                            app.send_task(RUN_NEXT, producer=producer)
                    sent += chunk
                    continue
                except KombuError as exc:
                    log.warning("batched publish of %d turns failed (%s); sending them one by one", chunk, exc)
                    batch = None
            for _ in range(chunk):
                app.send_task(RUN_NEXT, producer=producer)
            sent += chunk
