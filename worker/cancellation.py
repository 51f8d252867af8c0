"""Performing one cancel command against the UKSSDC: the worker's side of the data flow.

One `CancellationRun` is one turn (one execution of a Celery task). It checks that something is
runnable (if not it ends, with no permit), takes a permit from the fleet gate, then claims the
next command from the schedule (`ukcancel.schedule`: an expired lease, a due retry, else fair
between users), makes the UKSSDC calls while renewing the command's lease, and either stores the
final tuple or puts the command on the due list for later.
Everything it learned on the way (products resolved from "all", products already settled,
whether an earlier request may have reached the server) is written to the command's record, so
the next run carries on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from ukcancel import lifecycle, logs, metrics
from ukcancel import products as product_names
from ukcancel.codes import ACTIVE_STATES, CancelCode, ProductState
from ukcancel.command import CancelCommand, CommandState
from ukcancel.fleet import UNWANTED_REASON, FleetGate, Permit, Wait
from ukcancel.outcome import (
    CONFIRMED_CANCELLED_TEXT,
    CONFIRMED_FINISHED_TEXT,
    ProductOutcome,
    error_tuple,
    processed_tuple,
)
from ukcancel.retry import Rand, Reschedule, backoff_delay
from ukcancel.schedule import Claim
from ukcancel.store import ReplicasUnconfirmed, confirm_replicas
from ukcancel.worker.listing_resolver import ListingResolver, resolution
from ukcancel.worker.ukssdc import ServerError, UkssdcClient, UkssdcFailure

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

# Once a run has begun calling the UKSSDC it waits this much longer for each further permit,
# so a command finishes rather than going to the back of the line mid-way.
IN_RUN_WAIT_FACTOR = 5
# A command that found no permit for a further call is due again after the gate's wait, but no later
# than this: one turn a minute while the fleet waits, and a raised rate or a lifted pause is seen.
PERMIT_RECHECK_SECONDS = 60.0


@dataclass
class RunResult:
    """What a run did, for logs and tests."""

    command_id: str | None
    state: str | None
    waited: bool = False  # work was runnable but no permit came in time: the lane should go on


class _NeedsRetry(Exception):
    """Some products' outcome is still unknown; `fallback` is the tuple to report if the budget runs out."""

    def __init__(self, message: str, fallback: list[Any]) -> None:
        super().__init__(message)
        self.fallback = fallback


class CancellationRun:
    """One turn: check for runnable work, take a permit, claim from the schedule, make the UKSSDC calls.

    `holder` names this run's leases (unique per run, so two deliveries of one message never
    renew or end each other's leases).
    """

    def __init__(
        self,
        runtime: Runtime,
        holder: str,
        gate: FleetGate,
        client: UkssdcClient,
        rand: Rand = random.uniform,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.registry = runtime.registry
        self.schedule = runtime.schedule
        self.holder = holder
        self.gate = gate
        self.client = client
        self.rand = rand
        self._permit: Permit | None = None
        self._counting: str | None = None  # the command whose attempt this run's next call counts

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Check that work is runnable, take a permit, then claim the next command and carry it on.

        A turn that finds nothing runnable ends at once, without a permit or a call; while it
        waits for a permit it keeps asking, so work withdrawn meanwhile costs no permit. The
        command is claimed only once the permit is held, so it is the fairest one at that moment
        (an expired lease, a due retry, else the next user's oldest), not one taken before a wait
        (which would put every lane's claim ahead of a newcomer). A command that cannot go on now
        (a retry) is put on the due list, never left in a Celery countdown.
        """
        if not self.schedule.start_turn():
            metrics.EMPTY_TURNS.inc()
            return RunResult(None, None)
        max_wait = self.settings.fleet_max_wait_seconds
        # While it waits (not when a permit is free at once, the usual case under load) the turn
        # covers its lane, so the reconciler sends no other for it.
        outcome = self.gate.acquire(max_wait, wanted=self.schedule.runnable_now,
                                    while_waiting=lambda: self.schedule.waiting_for_permit(self.holder, max_wait))
        if isinstance(outcome, Wait):
            # No permit in time, or the work went away: nothing was claimed. The turn ends without
            # a successor; the reconciler sends one once the gate says a permit is near, so a
            # fleet that must wait (a pause, an open breaker, a slow rate) does not spin.
            log.debug("turn %s ends without a permit: %s (%.2f s)", self.holder, outcome.reason, outcome.seconds)
            return RunResult(None, None, waited=outcome.reason != UNWANTED_REASON)
        self._permit = outcome
        try:
            while True:
                claim = self.schedule.claim(self.holder)
                if claim is None:
                    return RunResult(None, None)  # another turn took it; the permit goes back unused
                command = self.registry.get(claim.command_id)
                if command is None or command.terminal:
                    # Withdrawn (aborted), expired, or finished by another run: take the next.
                    self.schedule.release(claim.command_id, self.holder)
                    continue
                if claim.takeover:
                    metrics.LEASES_TAKEN_OVER.inc()
                    log.warning("command %s: its lease had expired (worker lost); taking it over", command.id)
                with self.schedule.holding(command.id, self.holder), logs.context(
                    command_id=command.id, batch_id=command.batch_id, user=command.user_id
                ):
                    return self._perform(command, claim)
        finally:
            self._return_unused_permit()  # every call gave its own permit back

    # -- permits -------------------------------------------------------------------------------
    def _return_unused_permit(self) -> None:
        # No call was made with it: neither a success nor a failure for the breaker.
        if self._permit is not None:
            self.gate.release_unused(self._permit)
            self._permit = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One UKSSDC call under a permit (the one taken with the command, else a new one).

        The run's first call counts the command's attempt once it has been made, whatever it
        answered: an attempt is counted only for a request that was sent (a run deferred before its
        first, one whose lease was taken over, or one killed mid-call counts none, so a crash never
        uses up a command's budget).
        """
        reserved, self._permit = self._permit, None
        max_wait = self.settings.fleet_max_wait_seconds * IN_RUN_WAIT_FACTOR
        with self.gate.permit(max_wait, reserved=reserved, rand=self.rand):
            try:
                return fn(*args)
            finally:
                if self._counting is not None:
                    command_id, self._counting = self._counting, None
                    self.registry.record_progress(command_id, holder=self.holder, count_attempt=True)

    # -- one command -----------------------------------------------------------------------------
    def _perform(self, command: CancelCommand, claim: Claim) -> RunResult:
        # Taken over (or found "running"): the run that started it died, and its request may
        # have reached the server, so a "not cancelled" answer must be checked.
        redelivered = claim.takeover or command.state == CommandState.RUNNING
        started = self.schedule.start(command.id, self.holder)
        if not started.held:
            log.info("command %s: lease taken over before it started; the other run carries it", command.id)
            return RunResult(command.id, None)
        if not started.moved:
            self.schedule.release(command.id, self.holder)
            return RunResult(command.id, started.state)
        if redelivered and not command.ambiguous:
            command.ambiguous = True
            self.registry.record_progress(command.id, holder=self.holder, ambiguous=True)
        self._counting = command.id
        attempt = command.attempts + 1
        try:
            result, server_ok = self._cancel(command)
        except _NeedsRetry as exc:
            return self._retry_or_fail(command, attempt, str(exc), None, fallback=exc.fallback)
        except UkssdcFailure as failure:
            if failure.maybe_processed:
                self.registry.record_progress(command.id, holder=self.holder, ambiguous=True)
            if not failure.transient:
                return self._finish(command, error_tuple(-1, str(failure)), error=str(failure))
            return self._retry_or_fail(command, attempt, str(failure), failure.retry_after)
        except Reschedule as wait:
            # No capacity for a further call mid-run: wait in state retrying, keep what was learned.
            # Due again within a minute at most, so a rate raised or a pause lifted meanwhile is seen.
            return self._due_again(command, min(wait.countdown, PERMIT_RECHECK_SECONDS), f"waiting: {wait.reason}")
        except redis.RedisError:
            raise  # the store is away: the turn ends, the lease lapses, and a later run takes it over
        except Exception as exc:  # a defect must not leave the command running for ever
            log.exception("internal error performing command %s", command.id)
            message = f"internal error in the worker: {type(exc).__name__}"
            return self._finish(command, error_tuple(-1, message), error=message)
        return self._finish(command, result, server_ok=server_ok)

    def _retry_or_fail(
        self,
        command: CancelCommand,
        attempt: int,
        error: str,
        retry_after: float | None,
        fallback: list[Any] | None = None,
    ) -> RunResult:
        if attempt >= self.settings.max_attempts:
            message = f"gave up after {attempt} attempts: {error}"
            return self._finish(command, fallback or error_tuple(-1, message), error=message)
        delay = backoff_delay(
            attempt, self.settings.retry_base_seconds, self.settings.retry_max_delay_seconds, retry_after, self.rand
        )
        metrics.RETRIES.inc()
        return self._due_again(command, delay, error)

    def _due_again(self, command: CancelCommand, delay: float, error: str) -> RunResult:
        """running -> retrying, on the due list `delay` seconds from now: one step, while this run
        holds the lease (a run whose lease was taken over leaves the command to the other run)."""
        moved = self.schedule.retry_later(command.id, self.holder, self.registry.now() + delay, error)
        if not moved.held:
            log.info("command %s: lease taken over; the other run carries it (%s)", command.id, error)
        return RunResult(command.id, moved.state)

    def _finish(
        self, command: CancelCommand, result: list[Any], *, server_ok: int | None = None, error: str | None = None
    ) -> RunResult:
        done = lifecycle.finish(self.schedule, command.id, self.holder, result, server_ok=server_ok, error=error)
        if not done.held:
            log.info("command %s: lease taken over; the other run's outcome stands", command.id)
            return RunResult(command.id, None)
        try:
            # Reported once a replica holds it (with UKCANCEL_REDIS_MIN_REPLICAS): nothing after the
            # step depends on it, but an operator should know when a failover could undo one.
            confirm_replicas(self.registry.connection, self.settings.redis_min_replicas,
                             self.settings.redis_replica_timeout_ms)
        except ReplicasUnconfirmed as exc:
            log.warning("command %s completed; not yet confirmed by a replica (a failover now would run it "
                        "again, as an ambiguous attempt): %s", command.id, exc)
        log.info("command %s of job %s %s: status %s", command.id, command.job_id, done.state, result[0])
        return RunResult(command.id, done.state)

    # -- the UKSSDC conversation -------------------------------------------------------------
    def _cancel(self, command: CancelCommand) -> tuple[list[Any], int | None]:
        """The final tuple and the server's own OK; raises `_NeedsRetry`/`UkssdcFailure` to go again."""
        resolved, unlisted = self._resolve(command)
        if isinstance(resolved, ServerError):
            return error_tuple(0, resolved.message), 0
        settled = {short: ProductOutcome(**entry) for short, entry in command.settled.items()}
        pending = [short for short in resolved if short not in settled]
        server_ok = command.server_ok
        if pending:
            reply = self._call(self.client.cancel_job, command.user_id, command.job_id, pending)
            if reply.ok == 0:
                return error_tuple(0, reply.error or ""), 0
            server_ok = reply.ok
            still_unknown = self._settle(command, reply.outcomes, settled)
            self.registry.record_progress(
                command.id, holder=self.holder, settled={s: o.as_dict() for s, o in settled.items()},
                server_ok=server_ok,
            )
            if still_unknown:
                unknown = {**settled, **{s: reply.outcomes[s] for s in still_unknown}}
                raise _NeedsRetry(
                    "outcome unknown and product still active: "
                    + ", ".join(product_names.SHORT_TO_LONG[s] for s in still_unknown),
                    fallback=processed_tuple({s: unknown[s] for s in resolved if s in unknown}),
                )
        if unlisted:
            # "all" for a job listOldJobs did not show: drop what the job never had.
            settled = {s: o for s, o in settled.items() if o.code != CancelCode.NO_RECORD}
        ordered = {short: settled[short] for short in resolved if short in settled}
        return processed_tuple(ordered), server_ok

    def _resolve(self, command: CancelCommand) -> tuple[list[str] | ServerError, bool]:
        """Short names to cancel: the command's own, or "all" resolved through the user's job listing
        (`ukcancel.worker.listing_resolver`: listOldJobs.php at most once per user per status TTL)."""
        if command.products != product_names.ALL:
            return product_names.short_names(command.products), False
        if command.resolved is not None:
            return command.resolved, command.unlisted
        listings = ListingResolver(self.runtime.jobs, self.client, self._call, self.settings, self.holder)
        listed = listings.job(command.user_id, command.job_id, since=command.created_at)
        if isinstance(listed, ServerError):
            return listed, False
        resolved, unlisted = resolution(listed)
        self.registry.record_progress(command.id, holder=self.holder, resolved=resolved, unlisted=unlisted)
        return resolved, unlisted

    def _settle(
        self, command: CancelCommand, outcomes: dict[str, ProductOutcome], settled: dict[str, ProductOutcome]
    ) -> list[str]:
        """Fold a reply into `settled`; confirm doubtful codes with a status check. Returns still-unknown."""
        doubtful = [
            short
            for short, outcome in outcomes.items()
            if outcome.code == CancelCode.OUTCOME_UNKNOWN
            or (outcome.code == CancelCode.NOT_CANCELLED_FINISHED and command.ambiguous)
        ]
        for short, outcome in outcomes.items():
            if short not in doubtful:
                settled[short] = outcome
        if not doubtful:
            return []
        states = self._call(self.client.product_states, command.user_id, command.job_id, doubtful)
        if isinstance(states, ServerError):
            states = {}
        still_unknown: list[str] = []
        for short in doubtful:
            reported, state = outcomes[short], states.get(short)
            if state == ProductState.CANCELLED_BY_USER:
                # Our earlier request (or this one, code 4) did cancel it.
                settled[short] = ProductOutcome(CancelCode.CANCELLED, CONFIRMED_CANCELLED_TEXT)
            elif reported.code == CancelCode.NOT_CANCELLED_FINISHED:
                settled[short] = reported
            elif state is not None and state not in ACTIVE_STATES:
                settled[short] = ProductOutcome(CancelCode.NOT_CANCELLED_FINISHED, CONFIRMED_FINISHED_TEXT)
            elif state in ACTIVE_STATES:
                still_unknown.append(short)
            else:
                settled[short] = reported  # the status check could not tell either
        return still_unknown

