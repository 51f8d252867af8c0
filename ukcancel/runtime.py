"""The objects one process of the service works with, built once from `Settings`.

The API process and the worker process build the same `Runtime`; in embedded mode (no
`REDIS_URL`) the Redis connection is an in-process fakeredis server and the broker is Celery's
in-memory transport, so `ukcancel demo` needs no servers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from ukcancel.batch import BatchRegistry
from ukcancel.command import CommandRegistry
from ukcancel.queue import CancelQueue
from ukcancel.settings import Settings
from ukcancel.token import TokenRegistry

if TYPE_CHECKING:
    from celery import Celery

    from ukcancel.worker.rate_limit import FleetGate


def connect_redis(settings: Settings) -> redis.Redis:
    """A client for `REDIS_URL`, or an in-process fakeredis server when it is unset."""
    if settings.redis_url is None:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_timeout=70)


def _no_broker(count: int) -> None:
    raise RuntimeError("no Celery app attached to this runtime")


@dataclass
class Runtime:
    settings: Settings
    connection: redis.Redis
    registry: CommandRegistry = field(init=False)
    queue: CancelQueue = field(init=False)
    tokens: TokenRegistry = field(init=False)
    batches: BatchRegistry = field(init=False)
    celery: Celery | None = None
    # Called with a command id once it becomes terminal (results stream, callbacks).
    terminal_hooks: list[Callable[[str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = CommandRegistry(self.connection, self.settings.result_ttl_seconds)
        self.queue = CancelQueue(self.connection, self.registry, _no_broker)
        self.tokens = TokenRegistry(self.connection)
        self.batches = BatchRegistry(self.connection, self.settings.result_ttl_seconds)

    @functools.cached_property
    def gate(self) -> FleetGate:
        """The fleet gate toward the UKSSDC: workers take permits from it, the API reads its state."""
        from ukcancel.worker.rate_limit import FleetGate

        return FleetGate(self.connection, self.settings)

    @classmethod
    def create(cls, settings: Settings, connection: redis.Redis | None = None) -> Runtime:
        """A runtime with its Celery app attached (API and worker alike send and run tasks)."""
        from ukcancel.stream import ResultStream
        from ukcancel.worker.callbacks import CallbackScheduler
        from ukcancel.worker.celery_app import create_celery

        runtime = cls(settings, connection if connection is not None else connect_redis(settings))
        create_celery(runtime)
        runtime.terminal_hooks += [ResultStream(runtime), CallbackScheduler(runtime)]
        return runtime
