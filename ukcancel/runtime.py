"""The objects one process of the service works with: a plain container, given its parts.

`ukcancel.assemble` is the composition root: it builds the parts (with the clock, the gate and
the `Dispatch` a test may pass instead) and hands them to a `Runtime`, which builds nothing
itself. The API process and the worker process hold the same kind of `Runtime`. The core reaches
the workers only through `ukcancel.dispatch.Dispatch`, the port the Celery layer implements
(`ukcancel.worker.tasks.CeleryDispatch`), so nothing here imports the HTTP or the Celery layer.
Flows take the parts they use (a `Protocol` of them, such as `ukcancel.lifecycle.WithdrawParts`);
a `Runtime` has them all. In embedded mode (no `REDIS_URL`) the connection is an in-process
fakeredis server and the broker Celery's in-memory transport.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ukcancel.batch import BatchRegistry
from ukcancel.command import CommandRegistry
from ukcancel.dispatch import Dispatch
from ukcancel.events import EventListener
from ukcancel.fleet import FleetGate
from ukcancel.jobs import JobCache
from ukcancel.plans import PlanRegistry
from ukcancel.schedule import Schedule
from ukcancel.settings import Settings
from ukcancel.token import TokenRegistry


@dataclass
class Runtime:
    settings: Settings
    connection: redis.Redis
    dispatch: Dispatch  # hands turns and control work to the workers
    events: EventListener  # one pub/sub connection for every long poll of the process
    registry: CommandRegistry
    schedule: Schedule
    tokens: TokenRegistry
    batches: BatchRegistry
    gate: FleetGate  # workers take permits from it; the API reads its state
    jobs: JobCache
    plans: PlanRegistry
