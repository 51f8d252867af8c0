"""The Celery tasks that run commands, and `CeleryDispatch`, the broker side of `ukcancel.runtime.Dispatch`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from ukcancel.retry import Reschedule
from ukcancel.worker.all_active import EXPAND_ALL_ACTIVE
from ukcancel.worker.base_task import ServiceTask, service_task
from ukcancel.worker.callbacks import DELIVER_CALLBACK
from ukcancel.worker.cancellation import CancellationRun

log = logging.getLogger(__name__)

RUN_NEXT = "ukcancel.run_next"
FAN_OUT = "ukcancel.fan_out"
# Above this many turns, the API sends one fan-out message and a worker sends the turns, so
# accepting a 10,000-item batch costs the API one broker round trip.
FAN_OUT_THRESHOLD = 16
# Turns per batched publish (see `send_turns`).
TURN_BATCH = 1000


def register_tasks(app: Celery) -> None:
    @service_task(app, RUN_NEXT, max_retries=None)
    def run_next(self: ServiceTask) -> dict[str, Any]:
        """Take a turn: perform the next waiting command (or resume the one this task holds)."""
        try:
            result = CancellationRun(self.runtime, self.request.id, self.gate, self.ukssdc).run()
        except Reschedule as later:
            log.info("task %s rescheduled in %.2f s: %s", self.request.id, later.countdown, later.reason)
            # Celery's retry re-sends this message with the same task id, so the claim carries over.
            raise self.retry(countdown=later.countdown, max_retries=None) from None
        return {"command": result.command_id, "state": result.state}

    @service_task(app, FAN_OUT)
    def fan_out(self: ServiceTask, count: int) -> int:
        """Send `count` turns. A redelivery may send extra turns; a turn with nothing to do is a no-op."""
        send_turns(app, count)
        return count


class CeleryDispatch:
    """Hands the core's work to the workers as Celery messages (see `ukcancel.runtime.Dispatch`)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_turns(self, count: int) -> None:
        if count <= 0:
            return
        if count > FAN_OUT_THRESHOLD:
            self.app.send_task(FAN_OUT, args=[count])
        else:
            send_turns(self.app, count)

    def expand_all_active(self, batch_id: str) -> None:
        self.app.send_task(EXPAND_ALL_ACTIVE, args=[batch_id])

    def deliver_callback(self, command_id: str) -> None:
        self.app.send_task(DELIVER_CALLBACK, args=[command_id])


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
