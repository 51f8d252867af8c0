"""Turning a validated cancellation request into a queued command.

The one path shared by `POST /v1/cancellations` and the command stream (`ukcancel.stream`):
both load the request with `CancellationRequestSchema`, identify the caller by a token, and
call `submit`. Batches (`POST /v1/batches`) come in through `enqueue_batch` and
`start_expansion`.

A `Reservation` makes a submission repeatable: its key (an Idempotency-Key, or a stream entry id)
names at most one command. The key is written in the same Redis transaction as the command and
its place in line (WATCH/MULTI), so concurrent submissions with one key create exactly one command,
and a crash can never leave a key naming a command that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis

from ukcancel import keys
from ukcancel.batch import Batch
from ukcancel.command import CancelCommand
from ukcancel.dispatch import DispatchError
from ukcancel.lifecycle import WithdrawParts
from ukcancel.schedule import StagedCommands
from ukcancel.store import as_text, delete_if_held
from ukcancel.token import Principal

if TYPE_CHECKING:
    from ukcancel.dispatch import Dispatch
    from ukcancel.settings import Settings


class SubmissionParts(WithdrawParts, Protocol):
    """What submitting needs of a process's objects (a `ukcancel.runtime.Runtime` has them all):
    a withdrawal's registry, schedule and batches, and these."""

    @property
    def settings(self) -> Settings: ...
    @property
    def connection(self) -> redis.Redis: ...
    @property
    def dispatch(self) -> Dispatch: ...


# A round is lost only when another submission wrote the key between WATCH and EXEC; the next
# round then finds that key. More rounds than this means the key is being released and retaken.
RESERVATION_ROUNDS = 5


log = logging.getLogger(__name__)


class ReservationMismatch(ValueError):
    """The reservation key already names a command made from a different request."""

    def __init__(self, command_id: str) -> None:
        super().__init__(f"the key is already used for command {command_id}, made from a different request")
        self.command_id = command_id


@dataclass(frozen=True)
class Reservation:
    """A key naming at most one command, and the fingerprint of the request that may reuse it."""

    key: str
    fingerprint: str = ""

    @classmethod
    def idempotency_key(cls, token_name: str, key: str, fingerprint: str) -> Reservation:
        """The reservation of an Idempotency-Key, scoped to the token that sent it."""
        return cls(keys.idempotency(token_name, key), fingerprint)


@dataclass(frozen=True)
class Submission:
    command: CancelCommand
    created: bool  # False: the reservation already named this command (a replay)


def new_command(caller: Principal, request: dict[str, Any]) -> CancelCommand:
    """The command a loaded `CancellationRequestSchema` asks for; 403 if it acts for someone else."""
    return CancelCommand(
        job_id=request["job_id"],
        user_id=caller.acting_for(request.get("user_id")),
        products=request["products"],
        submitted_by=caller.token_name,
        callback_url=request.get("callback_url"),
    )


def submit(
    runtime: SubmissionParts, caller: Principal, request: dict[str, Any], reservation: Reservation | None = None
) -> Submission:
    """Store and dispatch the command `request` asks for, or find the one `reservation` names.

    Raises `NotPermitted` (acting for another user) and `ReservationMismatch`. A broker that is
    down does not refuse the command: it is queued in Redis, and its turn follows (`enqueue`).
    """
    command = new_command(caller, request)
    if reservation is None:
        enqueue(runtime, [command])
        return Submission(command, True)
    value = f"{command.id}|{reservation.fingerprint}"
    for _ in range(RESERVATION_ROUNDS):
        try:
            held = _reserve_and_enqueue(runtime, command, reservation, value)
        except redis.WatchError:
            continue  # another submission took the key between WATCH and EXEC: read it next round
        if held is None:
            return Submission(command, True)
        held_id, _, fingerprint = held.partition("|")
        if fingerprint != reservation.fingerprint:
            raise ReservationMismatch(held_id)
        existing = runtime.registry.get(held_id)
        if existing is not None:
            return Submission(existing, False)
        # The record expired before its reservation (e.g. a changed TTL): the key is free again.
        _release(runtime, reservation.key, held)
    raise redis.WatchError(f"reservation {reservation.key} kept changing")


def _reserve_and_enqueue(runtime: SubmissionParts, command: CancelCommand, reservation: Reservation, value: str) -> str | None:
    """Write reservation + command atomically and dispatch; the value already held if taken."""
    with runtime.connection.pipeline(transaction=True) as pipe:
        pipe.watch(reservation.key)
        held = pipe.get(reservation.key)
        if held is not None:
            return as_text(held)
        pipe.multi()
        pipe.set(reservation.key, value, ex=runtime.settings.result_ttl_seconds)
        staged = runtime.schedule.stage([command], pipe)
        results = pipe.execute()  # WatchError if the key moved since WATCH: nothing was written
    staged.send_turns(results)
    return None


def enqueue(runtime: SubmissionParts, commands: Sequence[CancelCommand]) -> None:
    """Store `commands` with their places in line, and send turns.

    Once this returns the commands exist and are queued, whatever the broker said: a broker that
    refused their turns only delays them (the reconciler sends turns for queued work).
    """
    runtime.schedule.enqueue(commands)


def enqueue_batch(runtime: SubmissionParts, batch: Batch, commands: list[CancelCommand]) -> Batch:
    """The batch, its commands and their places in line in one transaction; then its turns."""
    with runtime.connection.pipeline(transaction=True) as pipe:
        staged = stage_batch(runtime, batch, commands, pipe)
        results = pipe.execute()
    staged.send_turns(results)
    return batch


def stage_batch(runtime: SubmissionParts, batch: Batch, commands: list[CancelCommand],
                pipeline: redis.client.Pipeline) -> StagedCommands:
    """The batch and its commands written into `pipeline` (a transaction the caller has watched
    keys on, and executes); the caller then sends their turns with the pipeline's results."""
    runtime.batches.add(batch, commands, pipeline)
    return runtime.schedule.stage(commands, pipeline)


def start_expansion(runtime: SubmissionParts, batch: Batch) -> Batch:
    """Store an `all_active` batch (state expanding, no items) and have a worker find its items.

    A broker that refuses the expansion does not fail the batch: it is made overdue at once, so
    the reconciler sends the expansion as soon as the broker takes work again.
    """
    pipe = runtime.connection.pipeline(transaction=True)
    runtime.batches.add(batch, [], pipe)
    pipe.execute()
    try:
        runtime.dispatch.expand_all_active(batch.id)
    except DispatchError as exc:
        log.warning("batch %s: expansion waits for the broker (the reconciler sends it): %s", batch.id, exc)
        runtime.batches.expect_expansion(batch.id, -runtime.batches.expansion_timeout)
    return batch


def _release(runtime: SubmissionParts, key: str, value: str) -> None:
    delete_if_held(runtime.connection, key, value)
