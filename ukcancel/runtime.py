"""The objects one process of the service works with: a plain container, built by `ukcancel.assemble`.

The API process and the worker process hold the same kind of `Runtime`. The core reaches the
workers only through `ukcancel.dispatch.Dispatch`, the port the Celery layer implements (`ukcancel.worker.tasks`),
so nothing here imports the HTTP or the Celery layer. In embedded mode (no `REDIS_URL`) the
connection is an in-process fakeredis server and the broker Celery's in-memory transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from ukcancel.batch import BatchRegistry
from ukcancel.command import CommandRegistry
from ukcancel.dispatch import Dispatch
from ukcancel.events import EventListener
from ukcancel.fleet import FleetGate
from ukcancel.jobs import JobCache
from ukcancel.plans import PlanRegistry
from ukcancel.queue import CancelQueue
from ukcancel.settings import Settings
from ukcancel.token import TokenRegistry

if TYPE_CHECKING:
    from celery import Celery


@dataclass
class Runtime:
    settings: Settings
    connection: redis.Redis
    dispatch: Dispatch
    # The Celery app behind `dispatch`, for the processes that run a worker (set by the assembly).
    celery: Celery | None = None
    registry: CommandRegistry = field(init=False)
    queue: CancelQueue = field(init=False)
    tokens: TokenRegistry = field(init=False)
    batches: BatchRegistry = field(init=False)
    gate: FleetGate = field(init=False)  # workers take permits from it; the API reads its state
    events: EventListener = field(init=False)
    jobs: JobCache = field(init=False)
    plans: PlanRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventListener(self.connection)  # one pub/sub connection for every long poll
        self.registry = CommandRegistry(self.connection, self.settings.result_ttl_seconds, events=self.events)
        self.queue = CancelQueue(
            self.connection,
            self.registry,
            self.dispatch.send_turns,
            lanes=self.settings.dispatch_lanes,
            lease_seconds=self.settings.lease_seconds,
        )
        self.tokens = TokenRegistry(self.connection)
        self.batches = BatchRegistry(
            self.connection,
            self.settings.result_ttl_seconds,
            expansion_timeout=self.settings.expansion_timeout_seconds,
            events=self.events,
        )
        self.gate = FleetGate(self.connection, self.settings)
        self.jobs = JobCache(self.connection, self.settings.job_status_ttl_seconds, events=self.events)
        self.plans = PlanRegistry(
            self.connection, self.settings.result_ttl_seconds, self.settings.plan_ttl_seconds, events=self.events
        )
