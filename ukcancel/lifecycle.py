"""The end of a command's life: the only callers of a terminal transition, and what follows one.

A command becomes terminal in one of three ways: a worker completes it with its tuple, its
client withdraws it before a worker started it, or it is aborted because its turn could not be
handed to the broker. Each function here makes that transition and, only when it moved the
command (so once per command, whoever races), tells the runtime's terminal hooks: the results
stream and the callback. Batch listeners hear it from the transition script itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ukcancel import metrics
from ukcancel.command import ABORTED, QUEUED, CancelCommand, Transition

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime


def complete(
    runtime: Runtime, command_id: str, result: list[Any], *, server_ok: int | None = None, error: str | None = None
) -> Transition:
    """Store the final tuple (a command already terminal keeps its first) and announce it."""
    done = runtime.registry.complete(command_id, result, server_ok=server_ok, error=error)
    if done.moved:
        metrics.count_result(result)
        _announce(runtime, command_id)
    return done


def withdraw(runtime: Runtime, command: CancelCommand) -> Transition:
    """Withdraw a command no worker has started: aborted, out of its user's line, announced.

    Refused (`moved` false) once a worker has started it.
    """
    outcome = runtime.registry.withdraw(command.id)
    if outcome.moved:
        runtime.queue.remove_waiting(command)
        _announce(runtime, command.id)
    return outcome


def abort_unsent(runtime: Runtime, commands: Sequence[CancelCommand], error: str) -> None:
    """Abort queued commands whose turns the broker refused, so none waits for a turn that never comes."""
    for command in commands:
        outcome = runtime.registry.transition(command.id, ABORTED, (QUEUED,), fields={"last_error": error})
        runtime.queue.remove_waiting(command)
        if outcome.moved:
            _announce(runtime, command.id)


def _announce(runtime: Runtime, command_id: str) -> None:
    for hook in runtime.terminal_hooks:
        hook(command_id)
