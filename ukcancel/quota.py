"""Per-user quotas: one tenant cannot fill the store or the queue at everyone else's expense.

Four limits, each a setting (see `ukcancel.settings`), checked before the work is written:

- ``queued_commands`` (`UKCANCEL_QUOTA_QUEUED_COMMANDS`): commands waiting in the user's line
  (``ukcancel:fair:q:{user_id}``) plus those a request adds; a batch counts all its items;
- ``batches_per_hour`` (`UKCANCEL_QUOTA_BATCHES_PER_HOUR`): batches created for the user in the
  last hour (their index ``ukcancel:user:{user_id}:batches``; an applied plan makes a batch);
- ``plans_per_hour`` (`UKCANCEL_QUOTA_PLANS_PER_HOUR`): plans created in the last hour
  (``ukcancel:user:{user_id}:plans``, written by `ukcancel.plans.PlanRegistry.add`);
- ``long_polls`` (`UKCANCEL_QUOTA_LONG_POLLS`): requests holding a long poll (`?wait=N`, the
  console's live fragments) at once (``ukcancel:polls:{user_id}``).

Over a limit: `QuotaExceeded`, which the API answers as a 429 problem naming the limit and the
command stream dead-letters with a reason naming it. The checks read counters without locking
them, so concurrent requests of one user may pass a limit by as many requests as run at once; a
quota keeps a tenant's use bounded, it is not an exact ledger. Every check is O(1) or O(log n).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis

from ukcancel import keys
from ukcancel.settings import Settings

HOUR = 3600.0
# The key prefix of the users' waiting lines: the API's rate-limit script reads the caller's line
# in the same round trip as its token (`ukcancel.service.rate_limit`), and passes the count here.
WAITING_LINE_PREFIX = keys.fair_queue("")
# The prefix of the API rate limit's counters (one budget per token, `UKCANCEL_API_RATE_LIMIT`),
# which Flask-Limiter names itself under it (`ukcancel.service.rate_limit`).
API_RATE_LIMIT_PREFIX = keys.API_LIMITER_PREFIX
# Longest a long-poll slot counts if its request died without giving it back.
POLL_SLOT_SECONDS = 600


@dataclass(frozen=True)
class QuotaExceeded(Exception):
    """A request over one of the user's quotas; `limit` names it (``queued_commands``, ...)."""

    limit: str
    setting: str
    allowed: int
    current: int
    detail: str

    def __str__(self) -> str:
        return self.detail


# KEYS[1] the user's long-poll counter   ARGV[1] the most allowed   ARGV[2] slot lifetime (s)
# Takes a slot if fewer than ARGV[1] are held; returns the count held before (a refusal when it is
# at ARGV[1] or more: nothing is taken then).
_TAKE_POLL = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held >= tonumber(ARGV[1]) then return held end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return held
"""

# KEYS[1] the user's long-poll counter
# Gives a slot back, never below zero.
_GIVE_POLL = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held <= 1 then redis.call('DEL', KEYS[1]) else redis.call('DECR', KEYS[1]) end
return 1
"""


class Quotas:
    """The per-user limits of `settings`, read from the service's Redis."""

    def __init__(self, connection: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.connection = connection
        self.settings = settings
        self.clock = clock
        self._take_poll = connection.register_script(_TAKE_POLL)
        self._give_poll = connection.register_script(_GIVE_POLL)

    def check_commands(self, user_id: str, adding: int = 1, waiting: int | None = None) -> None:
        """Room in the user's line for `adding` more commands; `waiting`: its length if already read."""
        allowed = self.settings.quota_queued_commands
        if waiting is None:
            waiting = int(self.connection.llen(keys.fair_queue(user_id)))
        if waiting + adding > allowed:
            raise QuotaExceeded(
                "queued_commands", "UKCANCEL_QUOTA_QUEUED_COMMANDS", allowed, waiting,
                f"Quota queued_commands exceeded: {waiting} commands of this user are waiting and "
                f"{adding} more would pass the limit of {allowed} (UKCANCEL_QUOTA_QUEUED_COMMANDS); "
                "wait for some to run, or withdraw some.",
            )

    def check_batch(self, user_id: str, items: int, waiting: int | None = None) -> None:
        """Room for one more batch this hour, and in the user's line for its `items`."""
        allowed = self.settings.quota_batches_per_hour
        made = int(self.connection.zcount(keys.user_batches(user_id), repr(self.clock() - HOUR), "+inf"))
        if made >= allowed:
            raise QuotaExceeded(
                "batches_per_hour", "UKCANCEL_QUOTA_BATCHES_PER_HOUR", allowed, made,
                f"Quota batches_per_hour exceeded: {made} batches were made for this user in the last "
                f"hour, the limit is {allowed} (UKCANCEL_QUOTA_BATCHES_PER_HOUR).",
            )
        if items:
            self.check_commands(user_id, items, waiting)

    def check_plan(self, user_id: str) -> None:
        """Room for one more plan this hour."""
        allowed = self.settings.quota_plans_per_hour
        index = keys.user_plans(user_id)
        made = int(self.connection.zcount(index, repr(self.clock() - HOUR), "+inf"))
        if made >= allowed:
            raise QuotaExceeded(
                "plans_per_hour", "UKCANCEL_QUOTA_PLANS_PER_HOUR", allowed, made,
                f"Quota plans_per_hour exceeded: {made} plans were made for this user in the last "
                f"hour, the limit is {allowed} (UKCANCEL_QUOTA_PLANS_PER_HOUR).",
            )

    @contextlib.contextmanager
    def long_poll(self, user_id: str) -> Iterator[None]:
        """Hold one of the user's long-poll slots for the `with` block."""
        self.take_long_poll(user_id)
        try:
            yield
        finally:
            self.give_long_poll(user_id)

    def take_long_poll(self, user_id: str) -> None:
        allowed = self.settings.quota_long_polls
        held = int(self._take_poll(keys=[keys.user_polls(user_id)], args=[allowed, POLL_SLOT_SECONDS]))
        if held >= allowed:
            raise QuotaExceeded(
                "long_polls", "UKCANCEL_QUOTA_LONG_POLLS", allowed, held,
                f"Quota long_polls exceeded: this user already holds {held} waiting requests, the limit "
                f"is {allowed} (UKCANCEL_QUOTA_LONG_POLLS); ask without wait, or once one returns.",
            )

    def give_long_poll(self, user_id: str) -> None:
        self._give_poll(keys=[keys.user_polls(user_id)])
