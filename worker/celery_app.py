"""The Celery application: broker settings that make a killed worker lose nothing.

- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its task
  finished, and a worker killed mid-task (SIGKILL) puts the message back for another worker.
- prefetch multiplier 1: a worker reserves one message per slot, so others can take the rest.
- a broker visibility timeout longer than the longest retry delay: Redis redelivers unacked
  messages after that timeout, and a delayed retry must not be redelivered while it waits.
Redis is the default broker; `CELERY_BROKER_URL=amqp://...` switches to RabbitMQ unchanged.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, bootsteps

from ukcancel import keys

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

QUEUE = "ukcancel"
HEARTBEAT_SECONDS = 5.0
LIVE_WORKER_SECONDS = 3 * HEARTBEAT_SECONDS


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
        name = f"{worker.hostname or socket.gethostname()}"

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    runtime.connection.zadd(keys.WORKERS, {name: time.time()})
                except redis.RedisError:  # Redis briefly away: /readyz will say so; keep beating.
                    pass
                self._stop.wait(HEARTBEAT_SECONDS)

        self._thread = threading.Thread(target=beat, name="ukcancel-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        try:
            worker.app.runtime.connection.zrem(keys.WORKERS, worker.hostname)
        except redis.RedisError:  # shutting down without Redis: the entry ages out of the live window
            pass


def live_workers(runtime: Runtime, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    names = runtime.connection.zrangebyscore(keys.WORKERS, now - LIVE_WORKER_SECONDS, "+inf")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def create_celery(runtime: Runtime) -> Celery:
    """A Celery app bound to `runtime`, with the service's tasks registered and dispatch wired."""
    settings = runtime.settings
    app = Celery("ukcancel", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
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
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_seconds},
        result_backend=None,
    )
    app.runtime = runtime  # type: ignore[attr-defined]
    app.steps["worker"].add(WorkerHeartbeat)

    from ukcancel.worker.all_active import register_all_active
    from ukcancel.worker.callbacks import register_callback_tasks
    from ukcancel.worker.tasks import register_tasks

    register_tasks(app)
    register_all_active(app)
    register_callback_tasks(app)
    runtime.celery = app
    return app
