"""The port through which the core hands work to the workers: `Dispatch`, and its one error.

The Celery layer implements it (`ukcancel.worker.tasks.CeleryDispatch`); the core and the HTTP
layer see only `DispatchError`, never a broker's own exception types.
"""

from __future__ import annotations

from typing import Protocol


class DispatchError(RuntimeError):
    """The broker would not take the work (down, refused, unreachable). Nothing in Redis is lost
    with it: the schedule keeps the commands, and the reconciler sends their turns later."""


class Dispatch(Protocol):
    """Work handed to the workers through the broker; each raises `DispatchError` when the broker
    cannot take it."""

    def send_turns(self, count: int) -> None:
        """Send `count` turns ("run the next command")."""

    def queued_turns(self) -> int:
        """Turns waiting in the broker, not yet delivered to a worker (for the reconciler)."""

    def expand_all_active(self, batch_id: str) -> None:
        """Have a worker find the active products of an `all_active` batch."""

    def refresh_jobs(self, user_id: str) -> None:
        """Have a worker read the user's jobs and the states of their products (`ukcancel.jobs`)."""
