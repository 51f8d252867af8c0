"""The turn task that runs commands, and `CeleryDispatch`, the broker side of `ukcancel.runtime.Dispatch`.

Routing (one broker, two queues, both consumed by every `ukcancel worker` by default):

- ``ukcancel``: turns (`ukcancel.run_next`), anonymous leave to run "the next command";
- ``ukcancel.control``: the `all_active` expansion, callback deliveries and refreshes of a
  user's jobs (`ukcancel.refresh_jobs`), so control work
  never waits behind cancel turns.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from kombu.exceptions import ChannelError, KombuError

from ukcancel.dispatch import DispatchError
from ukcancel.worker.all_active import EXPAND_ALL_ACTIVE
from ukcancel.worker.base_task import ServiceCelery, ServiceTask, service_task
from ukcancel.worker.callback_sender import DELIVER_CALLBACK
from ukcancel.worker.cancellation import CancellationRun
from ukcancel.worker.jobs_refresh import REFRESH_JOBS

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

RUN_NEXT = "ukcancel.run_next"
TURN_QUEUE = "ukcancel"
CONTROL_QUEUE = "ukcancel.control"
ROUTES = {RUN_NEXT: {"queue": TURN_QUEUE}, EXPAND_ALL_ACTIVE: {"queue": CONTROL_QUEUE},
          DELIVER_CALLBACK: {"queue": CONTROL_QUEUE}, REFRESH_JOBS: {"queue": CONTROL_QUEUE}}


def register_tasks(app: Celery) -> None:
    @service_task(app, RUN_NEXT)
    def run_next(self: ServiceTask) -> dict[str, Any]:
        """Take a turn: claim the next runnable command and carry it as far as it goes now.

        Never retried through Celery: what is due later is on the schedule's due list. A Redis
        or broker error ends the turn; the command's lease then lapses and the reconciler sends a
        turn for it, so nothing is lost with the turn.
        """
        holder = f"{self.request.id}/{uuid.uuid4().hex[:8]}"
        try:
            result = CancellationRun(self.runtime, holder, self.gate, self.ukssdc).run()
            if result.command_id is not None:  # a turn that found no permit has no successor
                self.runtime.schedule.continue_lane()
        except (redis.RedisError, DispatchError) as exc:
            log.warning("turn %s ended by a store or broker error (the reconciler resends): %s", holder, exc)
            return {"command": None, "state": None, "error": str(exc)}
        return {"command": result.command_id, "state": result.state}


class CeleryDispatch:
    """Hands the core's work to the workers as Celery messages (see `ukcancel.runtime.Dispatch`).

    Every broker error comes out as the port's own `DispatchError`, so neither the core nor the
    HTTP layer needs to know the broker's exception types.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_turns(self, count: int) -> None:
        with _as_dispatch_error():
            send_turns(self.app, count)

    def queued_turns(self) -> int:
        with _as_dispatch_error(), self.app.pool.acquire(block=True) as connection:
            try:
                return int(connection.default_channel.queue_declare(TURN_QUEUE, passive=True).message_count)
            except ChannelError:  # no worker has declared the queue yet: nothing waits in it
                return 0

    def expand_all_active(self, batch_id: str) -> None:
        with _as_dispatch_error():
            self.app.send_task(EXPAND_ALL_ACTIVE, args=[batch_id])

    def refresh_jobs(self, user_id: str) -> None:
        with _as_dispatch_error():
            self.app.send_task(REFRESH_JOBS, args=[user_id])


def celery_of(runtime: Runtime) -> ServiceCelery:
    """The Celery app a runtime dispatches through: what a worker process runs, and what an
    embedded worker or a test's purge works on."""
    dispatch = runtime.dispatch
    if not isinstance(dispatch, CeleryDispatch) or not isinstance(dispatch.app, ServiceCelery):
        raise ValueError(f"this runtime does not dispatch through the service's Celery app ({type(dispatch).__name__})")
    return dispatch.app


@contextlib.contextmanager
def _as_dispatch_error() -> Iterator[None]:
    # kombu raises its own errors, and the connection errors of the transport it uses (a Redis
    # broker's, or a socket's for AMQP) when it cannot reconnect.
    try:
        yield
    except (KombuError, redis.RedisError, OSError) as exc:
        raise DispatchError(f"{type(exc).__name__}: {exc}") from exc


def send_turns(app: Celery, count: int) -> None:
    """Send `count` turns through one producer (a handful: enqueue and the reconciler send at most
    the number of lanes)."""
    if count <= 0:
        return
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(RUN_NEXT, producer=producer)
