"""The base of every task of the service (Celery's `task_cls`), as Celery's guide shows with its
DatabaseTask, and the app that gives tasks their runtime.

A task's resources are properties of `ServiceTask`, built lazily once per process (so prefork
children build their own HTTP sessions): the runtime the composition root gave the app
(`ServiceCelery.use`), its gate, and the UKSSDC client. It also carries the options that make a
killed worker lose nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.worker.request import Request

from ukcancel.worker.ukssdc import UkssdcClient

if TYPE_CHECKING:
    from ukcancel.fleet import FleetGate
    from ukcancel.runtime import Runtime


class ServiceRequest(Request):
    """Celery's request, whose ack or reject survives a broker connection lost meanwhile.

    A task received before a Redis broker restart finishes after the worker reconnected; its
    message still belongs to the old channel, whose client kombu has cleared, so the ack raises
    an AttributeError. Celery runs the ack on its event loop and catches only the errors the
    request names, so that error stopped the worker ("Unrecoverable error"). Naming it here makes
    the ack fail like any lost-connection ack, logged: the message stays unacknowledged, the broker
    gives it back after its visibility timeout, and a turn or control task delivered twice changes
    nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connection_errors = (*self._connection_errors, AttributeError)


class ServiceCelery(Celery):
    """The service's Celery app; `ukcancel.assemble` gives it the runtime its tasks work with."""

    _runtime: Runtime | None = None

    def use(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("this Celery app was given no runtime (ukcancel.assemble.create_runtime gives one)")
        return self._runtime


class ServiceTask(Task):
    # Acknowledged only once the task has finished; a worker killed mid-task puts the message back.
    acks_late = True
    reject_on_worker_lost = True
    Request = ServiceRequest

    @functools.cached_property
    def runtime(self) -> Runtime:
        app = self.app
        if not isinstance(app, ServiceCelery):
            raise TypeError(f"a service task runs on a ServiceCelery app, not {type(app).__name__}")
        return app.runtime

    @functools.cached_property
    def gate(self) -> FleetGate:
        return self.runtime.gate

    @functools.cached_property
    def ukssdc(self) -> UkssdcClient:
        settings = self.runtime.settings
        return UkssdcClient(
            settings.ukssdc_base_url,
            settings.ukssdc_api_version,
            settings.ukssdc_connect_timeout_seconds,
            settings.ukssdc_timeout_seconds,
            deadline=settings.ukssdc_call_deadline_seconds,
            max_reply_bytes=settings.ukssdc_max_reply_bytes,
            retry_after_max=settings.retry_after_max_seconds,
        )


def service_task(app: Celery, name: str, **options: Any) -> Callable[[Callable[..., Any]], ServiceTask]:
    """`@service_task(app, NAME)`: a bound task of `app` on `ServiceTask`.

    shared=False: the task belongs to this app (and its runtime) only; Celery would otherwise add
    it to every app the process creates later, whose worker would then run it against the wrong store.
    """
    return app.task(bind=True, name=name, base=ServiceTask, shared=False, **options)  # type: ignore[no-any-return]
