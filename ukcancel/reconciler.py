"""Self-healing dispatch: one reconciler at a time sends the turns that the schedule is missing.

Every worker runs `Reconciler.tick` every `reconcile_seconds` (a Celery bootstep); a lock in
Redis lets only one of them act at a time, and passes to another worker when its holder stops.
A tick compares the work a turn could claim now (waiting commands, due retries, expired leases)
with the turns already on their way (waiting in the broker, or running under a lease) and sends
the difference, up to the number of lanes:

    missing = min(runnable + running, lanes) - (queued in the broker + running)

So whatever is lost (a turn the broker dropped, a queue emptied by hand, a worker killed mid
call, Redis restarted under the workers) is replaced within a tick or, for a killed worker's
command, within a lease; and extra turns change nothing, since a turn with nothing to claim ends
at once. An `all_active` expansion not heard from by its deadline is sent again the same way (a
second expansion of one batch finishes it at most once).

The reconciler also holds the lanes while the fleet must wait: when the gate says no permit can
be had within `max_wait` (a pause, an open breaker, a slow rate), it sends no turn, and a turn
that found no permit ends without a successor; when a permit is near but not free yet, one turn
is enough to take it. So a waiting fleet costs a tick's few Redis commands, not a busy loop.

Last, it sweeps the callback outbox: callbacks due now are leased and offered to this worker's
callback sender (`ukcancel.worker.callback_sender.CallbackSender`), which delivers them on threads of
its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from ukcancel import keys, metrics
from ukcancel.batch import BatchRegistry
from ukcancel.callback import CallbackOutbox
from ukcancel.fleet import FleetGate
from ukcancel.schedule import Schedule, ScheduleCounts
from ukcancel.store import delete_if_held

log = logging.getLogger(__name__)

# KEYS[1] the lock   ARGV[1] this reconciler's name   ARGV[2] lock time (ms)
# Takes the lock when it is free, or keeps it when this reconciler holds it. Returns 1 if held.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class CallbackSender(Protocol):
    def free(self) -> int:
        """Deliveries the sender could start now."""

    def offer(self, command_id: str) -> bool:
        """Start delivering this command's callback; False when its receiver host is busy."""


class TurnSender(Protocol):
    def send_turns(self, count: int) -> None: ...

    def queued_turns(self) -> int:
        """Turns waiting in the broker, not yet delivered to a worker."""

    def expand_all_active(self, batch_id: str) -> None: ...


@dataclass(frozen=True)
class TickReport:
    held: bool  # this reconciler held the lock and looked
    counts: ScheduleCounts | None = None
    queued: int = 0
    sent: int = 0
    expansions: int = 0  # overdue all_active expansions sent again
    gate_wait: float = 0.0  # seconds until the gate could grant a permit, when work was runnable
    callbacks: int = 0  # callbacks handed to the sender


def missing_turns(counts: ScheduleCounts, queued: int, lanes: int) -> int:
    """Turns to send so that the runnable work has turns on their way, at most `lanes` in all
    (turns waiting for a permit will claim too)."""
    if counts.runnable == 0:
        return 0
    wanted = min(counts.runnable + counts.live_leases, lanes)
    covered = queued + counts.live_leases + counts.waiting_turns
    return max(0, min(wanted - covered, counts.runnable))


class Reconciler:
    """Redis keys owned: ``ukcancel:reconciler`` (the lock; see `ukcancel.keys`)."""

    def __init__(
        self,
        connection: redis.Redis,
        schedule: Schedule,
        batches: BatchRegistry,
        sender: TurnSender,
        name: str,
        *,
        gate: FleetGate,
        max_wait: float,
        period_seconds: float,
        outbox: CallbackOutbox | None = None,
        callbacks: CallbackSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connection = connection
        self.schedule = schedule
        self.batches = batches
        self.sender = sender
        self.name = name
        self.gate = gate
        self.max_wait = max_wait
        self.period_seconds = period_seconds
        self.outbox = outbox
        self.callbacks = callbacks
        self.clock = clock
        self._hold = connection.register_script(_HOLD)

    @property
    def lock_ms(self) -> int:
        # Long enough to outlast one missed tick, short enough that a dead holder's successor
        # takes over within a few periods.
        return max(100, int(self.period_seconds * 3 * 1000))

    def tick(self) -> TickReport:
        """One look, if this reconciler holds (or now takes) the lock."""
        if not self._hold(keys=[keys.RECONCILER_LOCK], args=[self.name, self.lock_ms]):
            return TickReport(held=False)
        expansions = self._resend_overdue_expansions()
        callbacks = self._sweep_callbacks()
        counts = self.schedule.counts()
        if counts.runnable == 0:
            return TickReport(True, counts, expansions=expansions, callbacks=callbacks)
        wait = self.gate.next_permit_in()
        if wait.seconds > self.max_wait:  # the gate holds the lanes: a turn now could only end at once
            log.debug("reconciler holds the lanes: %s in %.2f s", wait.reason, wait.seconds)
            return TickReport(True, counts, expansions=expansions, gate_wait=wait.seconds, callbacks=callbacks)
        queued = self.sender.queued_turns()
        missing = missing_turns(counts, queued, self.schedule.lanes)
        if wait.seconds > 0:  # one permit is near, none is free: one turn on its way takes it
            missing = min(missing, max(0, 1 - queued - counts.live_leases - counts.waiting_turns))
        self.schedule.set_turns_on_their_way(queued + missing)
        if missing:
            self.sender.send_turns(missing)
            metrics.RECONCILER_TURNS.inc(missing)
            log.info(
                "reconciler sent %d turn(s): %d runnable, %d running, %d queued in the broker",
                missing, counts.runnable, counts.live_leases, queued,
            )
        return TickReport(True, counts, queued, missing, expansions, wait.seconds, callbacks)

    def _sweep_callbacks(self) -> int:
        """Hand the callbacks due now to the sender, as many as it has room for."""
        if self.outbox is None or self.callbacks is None:
            return 0
        offered = 0
        for command_id in self.outbox.claim_due(self.callbacks.free()):
            if self.callbacks.offer(command_id):
                offered += 1
            else:  # its receiver host is busy: due again soon, not after a whole lease
                self.outbox.due_again(command_id, self.clock() + self.period_seconds)
        return offered

    def _resend_overdue_expansions(self) -> int:
        overdue = self.batches.overdue_expansions()
        for batch_id in overdue:
            self.batches.expect_expansion(batch_id, 0.0)  # a new deadline first: one resend per timeout
            self.sender.expand_all_active(batch_id)
            log.warning("reconciler: expansion of batch %s not heard from; sent again", batch_id)
        metrics.RECONCILER_EXPANSIONS.inc(len(overdue))
        return len(overdue)

    def step_down(self) -> None:
        """Free the lock (a stopping worker), so another reconciler takes over at its next tick."""
        delete_if_held(self.connection, keys.RECONCILER_LOCK, self.name)
