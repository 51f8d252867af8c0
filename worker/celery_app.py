"""The Celery application: broker settings that make a killed worker lose nothing.

- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its task
  finished, and a worker killed mid-task (SIGKILL) puts the message back for another worker.
- prefetch multiplier 1: a worker reserves one message per slot, so others can take the rest.
- a broker visibility timeout longer than the longest retry delay of a control task (the
  expansion retries through Celery; cancel commands and callbacks never do).
- two queues (see `ukcancel.worker.tasks`): turns, and control work that never waits behind them.
- every worker runs the heartbeat (for `/readyz`) and the reconciler (`ukcancel.reconciler`),
  which also sweeps the callback outbox into this worker's `CallbackSender`.
- every worker watches the Redis master (`ukcancel.failover.MasterWatch`): after a failover the
  fleet gate pauses for one rate window before any permit comes from the new master.
Redis is the default broker (through Sentinel, kombu's ``sentinel://`` transport, when
`UKCANCEL_REDIS_SENTINELS` is set); `CELERY_BROKER_URL=amqp://...` switches to RabbitMQ unchanged.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

import redis
from celery import bootsteps
from celery.worker.consumer import Consumer
from kombu import Queue

from ukcancel import presence
from ukcancel.callback import CallbackOutbox
from ukcancel.dispatch import DispatchError
from ukcancel.failover import MasterWatch
from ukcancel.fleet import HEARTBEAT_SECONDS, forget_worker, record_heartbeat
from ukcancel.reconciler import Reconciler
from ukcancel.settings import Settings
from ukcancel.worker import all_active, callback_sender, jobs_refresh, tasks
from ukcancel.worker.base_task import ServiceCelery, ServiceTask
from ukcancel.worker.bounded_http import BoundedHttp
from ukcancel.worker.callback_sender import CallbackSender
from ukcancel.worker.metrics_server import MetricsEndpoint

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

QUEUE = tasks.TURN_QUEUE
QUEUES = (tasks.TURN_QUEUE, tasks.CONTROL_QUEUE)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes this worker's name and time to ``ukcancel:workers`` so `/readyz` can see live workers.

    Celery's own ping needs a broadcast-capable broker; a Redis sorted set works with every broker.
    """

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        runtime: Runtime = worker.app.runtime
        connection = runtime.connection
        name = f"{worker.hostname or socket.gethostname()}"
        # Through Sentinel, `ukcancel worker` attaches a watch the store tells of a new master at
        # once (before the pool forks); this one checks at every beat besides. A single Redis
        # restarted from its append-only file has lost no permit: no watch.
        watch = MasterWatch(connection, runtime.gate, runtime.settings.fleet_guard_seconds)
        sentinel = runtime.settings.sentinel
        settings = runtime.settings

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    if sentinel:
                        watch.check()
                    record_heartbeat(connection, name)
                    presence.publish(connection, f"worker:{name}", presence.WORKER, settings)
                except redis.RedisError:  # Redis briefly away: /readyz will say so; keep beating.
                    pass
                except Exception:  # a defect must not silently end this worker's heartbeat
                    log.exception("worker heartbeat failed (the next beat tries again)")
                self._stop.wait(HEARTBEAT_SECONDS)

        self._thread = threading.Thread(target=beat, name="ukcancel-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        try:
            forget_worker(worker.app.runtime.connection, worker.hostname)
            presence.forget(worker.app.runtime.connection, f"worker:{worker.hostname}")
        except redis.RedisError:  # shutting down without Redis: the entry ages out of the live window
            pass


class ReconcilerStep(bootsteps.StartStopStep):
    """Runs `Reconciler.tick` every `reconcile_seconds` in a thread of this worker's main process.

    Every worker runs one; the reconciler's lock in Redis lets one act at a time. Errors (Redis
    or the broker away) are logged and the next tick tries again.
    """

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._reconciler: Reconciler | None = None
        self._callbacks: CallbackSender | None = None

    def start(self, worker: Any) -> None:
        runtime: Runtime = worker.app.runtime
        self._callbacks = CallbackSender(runtime, BoundedHttp())
        self._reconciler = reconciler = Reconciler(
            runtime.connection,
            runtime.schedule,
            runtime.batches,
            runtime.dispatch,
            f"{worker.hostname or socket.gethostname()}",
            gate=runtime.gate,
            max_wait=runtime.settings.fleet_max_wait_seconds,
            period_seconds=runtime.settings.reconcile_seconds,
            outbox=CallbackOutbox(runtime.connection),
            callbacks=self._callbacks,
        )

        def loop() -> None:
            while not self._stop.wait(reconciler.period_seconds):
                try:
                    reconciler.tick()
                except (redis.RedisError, DispatchError, OSError) as exc:
                    log.warning("reconciler tick failed (next tick retries): %s", exc)
                except Exception:  # a defect must not end healing for this worker
                    log.exception("reconciler tick failed")

        threading.Thread(target=loop, name="ukcancel-reconciler", daemon=True).start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._callbacks is not None:
            self._callbacks.shutdown()
        if self._reconciler is not None:
            try:
                self._reconciler.step_down()
            except redis.RedisError:  # the lock lapses on its own
                pass


class ServiceConsumer(Consumer):
    """Celery's consumer, surviving the loss of a Redis broker (Redis restarted under the workers).

    Celery 5.7.0's `on_connection_error_after_connected` first `collect()`s the broken connection,
    which clears its transport's client, then `close()`s it; closing restores unacknowledged
    messages through that cleared client, and kombu raises an AttributeError that `ignore_errors`
    does not cover, so the worker stops with "Unrecoverable error". Here only that close is made
    to tolerate the cleared client; the rest of Celery's handler (cancelling, prefetch, restart)
    runs as it is. The unacknowledged messages it could not restore are turns and control tasks
    that the broker gives back after its visibility timeout, and that the reconciler replaces.
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_cleared_connection() -> None:
                try:
                    close()
                except AttributeError as error:
                    log.warning("closing the lost broker connection failed (%s); reconnecting anyway", error)

            connection.close = close_cleared_connection  # type: ignore[method-assign]
        super().on_connection_error_after_connected(exc)


def create_celery(settings: Settings) -> ServiceCelery:
    """A Celery app for `settings` with the service's tasks registered (its runtime is set later)."""
    app = ServiceCelery("ukcancel", broker=settings.effective_broker_url, set_as_current=False, task_cls=ServiceTask)
    app.conf.update(
        task_default_queue=QUEUE,
        task_queues=[Queue(name) for name in QUEUES],  # what a worker consumes unless told otherwise
        task_routes=tasks.ROUTES,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            **settings.broker_transport_options(),  # Sentinel: the master's name (and password)
        },
        result_backend=None,
        worker_consumer=f"{__name__}:ServiceConsumer",
    )
    app.steps["worker"].add(WorkerHeartbeat)
    app.steps["worker"].add(ReconcilerStep)
    app.steps["worker"].add(MetricsEndpoint)
    tasks.register_tasks(app)
    all_active.register_all_active(app)
    callback_sender.register_callback_tasks(app)
    jobs_refresh.register_jobs_tasks(app)
    return app
