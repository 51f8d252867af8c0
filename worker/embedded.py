"""Everything in one process, for a newcomer's first run and the demo: no Redis, no broker.

The store is an in-process fakeredis server, the broker Celery's in-memory transport, and a
real Celery worker (thread pool) consumes from it in a background thread. The data still flows
API -> Redis record + queue -> worker -> UKSSDC -> Redis record -> API.
"""

from __future__ import annotations

import threading
from types import TracebackType

from celery.worker import WorkController

from ukcancel.runtime import Runtime
from ukcancel.worker.tasks import celery_of


class EmbeddedWorker:
    """A Celery worker running inside this process, on the runtime's own Celery app."""

    def __init__(self, runtime: Runtime, concurrency: int = 4) -> None:
        self.runtime = runtime
        app = celery_of(runtime)
        # The in-memory transport polls; poll often so the demo answers promptly.
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "polling_interval": 0.05}
        # The thread pool looks tasks up in Celery's default app; the tasks are this app's alone
        # (shared=False, see worker/tasks.py), so this app must be the default while it runs.
        app.set_default()
        self.controller = WorkController(
            app=app,
            pool_cls="threads",
            concurrency=concurrency,
            hostname=f"embedded-{id(self):x}@localhost",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        self._thread = threading.Thread(target=self.controller.start, name="ukcancel-embedded-worker", daemon=True)

    def start(self) -> EmbeddedWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.controller.stop(in_sighandler=False)
        self._thread.join(timeout)

    def __enter__(self) -> EmbeddedWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
