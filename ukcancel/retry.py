"""When to try a failed call again: the one set of retryable HTTP statuses, back-off, reschedules.

Shared by the UKSSDC client (worker), the fleet gate (core) and callback delivery (worker), so
that all three agree on what is worth another try and how long to wait before it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# HTTP statuses after which the same request may well succeed.
TRANSIENT_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
# Statuses whose Retry-After asks the whole fleet to hold off, not just this call.
FLEET_PAUSE_STATUSES = frozenset({429, 503})

Rand = Callable[[float, float], float]


class CallFailure(Exception):
    """A call to a remote service that produced no usable answer.

    `transient`: worth a retry. `retry_after`: the server's Retry-After (seconds), if any.
    `maybe_processed`: the request may have reached the server and been acted on.
    `kind`: the outcome label of the call in metrics.
    """

    transient = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        maybe_processed: bool = False,
        kind: str = "transport",
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_processed = maybe_processed
        self.kind = kind
        self.status_code = status_code

    @property
    def fleet_pause(self) -> float | None:
        """Seconds every worker should hold off (a 429/503 with Retry-After), else None."""
        return self.retry_after if self.status_code in FLEET_PAUSE_STATUSES else None


class Reschedule(Exception):
    """Run this work again in `countdown` seconds, for `reason`."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Rand = random.uniform,
) -> float:
    """Exponential back-off with full jitter, never sooner than the server's Retry-After, at most `cap`."""
    ceiling = min(cap, base * (2 ** min(max(0, attempt - 1), 62)))  # bounded: no float overflow
    delay = rand(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def spread(seconds: float, rand: Rand = random.uniform) -> float:
    """`seconds` plus up to half as much again, so work told to wait does not all come back at once."""
    return seconds + rand(0, max(0.05, seconds / 2))
