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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import KombuError

from ukcancel import lifecycle
from ukcancel.batch import Batch
from ukcancel.command import CancelCommand
from ukcancel.store import as_text
from ukcancel.token import Principal

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

# A round is lost only when another submission wrote the key between WATCH and EXEC; the next
# round then finds that key. More rounds than this means the key is being released and retaken.
RESERVATION_ROUNDS = 5

# KEYS[1] reservation key   ARGV[1] the value this submission wrote
# Deletes the reservation only if it is still this submission's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BrokerUnavailable(RuntimeError):
    """The broker refused the command's turn; the command was withdrawn (aborted) and nothing runs."""


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
    runtime: Runtime, caller: Principal, request: dict[str, Any], reservation: Reservation | None = None
) -> Submission:
    """Store and dispatch the command `request` asks for, or find the one `reservation` names.

    Raises `NotPermitted` (acting for another user), `ReservationMismatch` and
    `BrokerUnavailable`.
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


def _reserve_and_enqueue(runtime: Runtime, command: CancelCommand, reservation: Reservation, value: str) -> str | None:
    """Write reservation + command atomically and dispatch; the value already held if taken."""
    with runtime.connection.pipeline(transaction=True) as pipe:
        pipe.watch(reservation.key)
        held = pipe.get(reservation.key)
        if held is not None:
            return as_text(held)
        pipe.multi()
        pipe.set(reservation.key, value, ex=runtime.settings.result_ttl_seconds)
        try:
            enqueue(runtime, [command], pipe)  # EXEC; WatchError if the key moved since WATCH
        except BrokerUnavailable:
            # A retry with the same key must be able to try again, not replay an aborted command.
            _release(runtime, reservation.key, value)
            raise
    return None


def enqueue(runtime: Runtime, commands: Sequence[CancelCommand], pipeline: redis.client.Pipeline | None = None) -> None:
    """Store and dispatch `commands` (executing `pipeline` with them).

    If the broker cannot take their turns, they are withdrawn (aborted, out of line) so no record
    waits for a turn that never comes, and `BrokerUnavailable` is raised.
    """
    try:
        runtime.queue.enqueue(commands, pipeline)
    except KombuError as exc:
        lifecycle.abort_unsent(runtime, commands, f"broker unavailable: {exc}")
        raise BrokerUnavailable(str(exc)) from None


BROKER_FAILED_BATCH = "the task broker was unavailable; nothing was enqueued"


def enqueue_batch(runtime: Runtime, batch: Batch, commands: list[CancelCommand]) -> Batch:
    """The batch, its commands and their places in line in one pipeline; then one dispatch.

    Raises `BrokerUnavailable` (the batch is then failed and its commands aborted).
    """
    pipe = runtime.connection.pipeline(transaction=True)
    runtime.batches.add(batch, commands, pipe)
    try:
        enqueue(runtime, commands, pipe)
    except BrokerUnavailable:
        runtime.batches.fail(batch.id, BROKER_FAILED_BATCH)
        raise
    return batch


def start_expansion(runtime: Runtime, batch: Batch) -> Batch:
    """Store an `all_active` batch (state expanding, no items) and have a worker find its items.

    Raises `BrokerUnavailable` (the batch is then failed).
    """
    pipe = runtime.connection.pipeline(transaction=True)
    runtime.batches.add(batch, [], pipe)
    pipe.execute()
    try:
        runtime.dispatch.expand_all_active(batch.id)
    except KombuError as exc:
        runtime.batches.fail(batch.id, BROKER_FAILED_BATCH)
        raise BrokerUnavailable(str(exc)) from None
    return batch


def _release(runtime: Runtime, key: str, value: str) -> None:
    runtime.connection.register_script(_RELEASE)(keys=[key], args=[value])
