"""The end of a command's life: the only callers of a terminal transition.

A command becomes terminal in one of two ways: the run holding its lease completes it with its
tuple (`finish`), or its client withdraws it before a run started it (`withdraw`). What a terminal
state brings with it (the results-stream entry, the callback in the outbox, the batch's news) is
written by the transition script itself (`ukcancel.command.TRANSITION_LUA`), so it happens once
per command whoever races, and no crash after the transition can lose it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ukcancel import metrics
from ukcancel.command import CancelCommand, Transition
from ukcancel.schedule import Schedule

if TYPE_CHECKING:
    from ukcancel.batch import BatchRegistry
    from ukcancel.command import CommandRegistry


class WithdrawParts(Protocol):
    """What a withdrawal needs of a process's objects (a `ukcancel.runtime.Runtime` has them all)."""

    @property
    def registry(self) -> CommandRegistry: ...
    @property
    def schedule(self) -> Schedule: ...
    @property
    def batches(self) -> BatchRegistry: ...


def finish(
    schedule: Schedule,
    command_id: str,
    holder: str,
    result: list[Any],
    *,
    server_ok: int | None = None,
    error: str | None = None,
) -> Transition:
    """Store the final tuple and end the lease, while `holder` has it (a command already terminal
    keeps its first result)."""
    done = schedule.finish(command_id, holder, result, server_ok=server_ok, error=error)
    if done.moved:
        metrics.count_result(result)
    return done


def withdraw(runtime: WithdrawParts, command: CancelCommand) -> Transition:
    """Withdraw a command no worker has started: aborted and out of its user's line.

    Refused (`moved` false) once a worker has started it.
    """
    outcome = runtime.registry.withdraw(command.id)
    if outcome.moved:
        runtime.schedule.remove_waiting(command)
    return outcome


def withdraw_batch(runtime: WithdrawParts, batch_id: str) -> list[str]:
    """Withdraw every item of a batch that no worker has started, in one step; the ids withdrawn."""
    return runtime.batches.withdraw_queued(batch_id, runtime.registry)
