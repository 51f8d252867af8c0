"""The composition root: the one place the parts are built and put together, as flaskr's
`create_app` is.

The core (`ukcancel.*`) imports neither the HTTP layer (`ukcancel.service`) nor the Celery layer
(`ukcancel.worker`), and those two never import each other; this module and the CLI are the only
ones that import several layers. A process builds its runtime here:

- `build_runtime(settings, connection, dispatch, clock=..., sleep=...)`: the core's parts on one
  Redis connection, every one reading the same clock, sending work through `dispatch` (a test
  passes a fake clock, or a `Dispatch` of its own);
- `create_runtime(settings)`: the Redis connection and the Celery app, whose `CeleryDispatch` is
  the runtime's `Dispatch` and whose tasks are given the runtime (`ServiceCelery.use`);
- `create_api(settings)`: the same runtime with the HTTP API around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from flask import Flask

from ukcancel.batch import BatchRegistry
from ukcancel.command import CommandRegistry
from ukcancel.dispatch import Dispatch
from ukcancel.events import EventListener
from ukcancel.fleet import FleetGate
from ukcancel.jobs import JobCache
from ukcancel.plans import PlanRegistry
from ukcancel.runtime import Runtime
from ukcancel.schedule import Schedule
from ukcancel.service.app import create_app
from ukcancel.settings import Settings
from ukcancel.store import connect_redis
from ukcancel.token import TokenRegistry
from ukcancel.worker.celery_app import create_celery
from ukcancel.worker.tasks import CeleryDispatch


def build_runtime(
    settings: Settings,
    connection: redis.Redis,
    dispatch: Dispatch,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Runtime:
    """The core's parts for one process, on `connection`, dispatching through `dispatch`; every part
    reads `clock`, and the fleet gate waits with `sleep` (a test passes a fake clock's)."""
    events = EventListener(connection)
    registry = CommandRegistry(connection, settings.result_ttl_seconds, clock=clock, events=events)
    return Runtime(
        settings=settings,
        connection=connection,
        dispatch=dispatch,
        events=events,
        registry=registry,
        schedule=Schedule(connection, registry, dispatch.send_turns, lanes=settings.dispatch_lanes,
                          lease_seconds=settings.lease_seconds, clock=clock),
        tokens=TokenRegistry(connection),
        batches=BatchRegistry(connection, settings.result_ttl_seconds, clock=clock,
                              expansion_timeout=settings.expansion_timeout_seconds, events=events),
        gate=FleetGate(connection, settings, clock=clock, sleep=sleep),
        jobs=JobCache(connection, settings.job_status_ttl_seconds, clock=clock, events=events),
        plans=PlanRegistry(connection, settings.result_ttl_seconds, settings.plan_ttl_seconds, clock=clock,
                           events=events),
    )


def create_runtime(settings: Settings, connection: redis.Redis | None = None) -> Runtime:
    """A runtime dispatching through its own Celery app, whose tasks work with it (API and worker alike)."""
    app = create_celery(settings)
    runtime = build_runtime(settings, connection if connection is not None else connect_redis(settings),
                            CeleryDispatch(app))
    app.use(runtime)
    return runtime


def create_api(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The HTTP API for `settings` (default: from the environment), or around an existing runtime."""
    return create_app(runtime if runtime is not None else create_runtime(settings or Settings.from_env()))
