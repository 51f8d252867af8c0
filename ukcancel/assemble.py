"""The one place the parts are put together, as flaskr's `create_app` is.

The core (`ukcancel.*`) imports neither the HTTP layer (`ukcancel.service`) nor the Celery layer
(`ukcancel.worker`), and those two never import each other; this module and the CLI are the only
ones that import several layers. A process builds its runtime here:

- `create_runtime(settings)`: the Redis connection, the Celery app (whose `CeleryDispatch` is the
  runtime's `Dispatch`) and the core registries;
- `create_api(settings)`: the same runtime with the HTTP API around it.
"""

from __future__ import annotations

import redis
from flask import Flask

from ukcancel.runtime import Runtime
from ukcancel.service.app import create_app
from ukcancel.settings import Settings
from ukcancel.store import connect_redis
from ukcancel.worker.celery_app import create_celery
from ukcancel.worker.tasks import CeleryDispatch


def create_runtime(settings: Settings, connection: redis.Redis | None = None) -> Runtime:
    """A runtime with its Celery app attached (API and worker alike send and run tasks)."""
    app = create_celery(settings)
    runtime = Runtime(
        settings,
        connection if connection is not None else connect_redis(settings),
        dispatch=CeleryDispatch(app),
        celery=app,
    )
    app.runtime = runtime
    return runtime


def create_api(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The HTTP API for `settings` (default: from the environment), or around an existing runtime."""
    return create_app(runtime if runtime is not None else create_runtime(settings or Settings.from_env()))
