"""One polite rate toward the UKSSDC for the whole fleet of workers, kept in Redis; the live workers.

Celery's `rate_limit` counts per worker instance; this gate is shared by every worker process
on every host. Before each UKSSDC call a worker asks the gate for a permit, which requires:

1. no fleet-wide pause (a 429/503 with Retry-After pauses every worker for that long);
2. the circuit breaker closed, or this call being its single half-open probe;
3. a free slot among `max_in_flight` concurrent calls (a lease, so a killed worker's slot frees
   itself);
4. room in the sliding window of `rate_per_second`: a log of permit times in Redis.

Rate and in-flight cap can be changed at run time (`ukcancel fleet --rate ...`); every acquire
reads them from Redis, so workers need no restart.

Permits are paced one interval (1/rate) apart, so calls are spread over the window rather than
sent in a burst at its start; a permit's time is re-stamped just before its call goes out
(`stamp`). The UKSSDC still sees a call a little after that, by a varying delay (more on a
loaded host), so two calls one window apart at the gate can arrive less than a window apart.
The window is therefore lengthened by a guard interval (`fleet_guard_seconds`) larger than
that jitter: the UKSSDC never sees more than the limit in any window, at the cost of a peak
rate of limit / (window + guard).

A call is made under a permit with `FleetGate.permit`, a context manager (dramatiq's
`RateLimiter.acquire` is the model): it waits for a permit or raises `Reschedule`, stamps it,
and on the way out pauses the fleet for a 429/503 Retry-After, tells the breaker how the call
went and always gives the permit back.

Workers write a heartbeat (`record_heartbeat`) that `/readyz`, the metrics and the CLI read
back with `live_workers`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from ukcancel import keys, metrics
from ukcancel.retry import CallFailure, Rand, Reschedule, spread
from ukcancel.settings import MIN_FLEET_RATE_PER_SECOND, Settings
from ukcancel.store import as_text, as_text_dict


class BreakerState(StrEnum):
    """The circuit breaker's state, as `ukcancel fleet`, the console and the metrics show it."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"  # the cool-down is over: one probe call at a time


class CallOutcome(StrEnum):
    """How the call made under a permit went, as the permit is given back (`FleetGate.release`)."""

    OK = "ok"
    FAILED = "failed"  # a transient failure: the breaker counts it
    SENT = "sent"  # sent, its outcome unknown: it stays in the rate window, the breaker is not told
    UNUSED = "unused"  # no call was made: its place in the rate window goes back to the fleet


CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
OK, FAILED, SENT, UNUSED = CallOutcome.OK, CallOutcome.FAILED, CallOutcome.SENT, CallOutcome.UNUSED
PAUSED_REASON = "fleet paused by the UKSSDC's Retry-After"
UNWANTED_REASON = "the work was withdrawn or finished while it waited"
HEARTBEAT_SECONDS = 5.0
LIVE_WORKER_SECONDS = 3 * HEARTBEAT_SECONDS

# KEYS[1] run-time config   KEYS[2] in flight (permit id -> lease expiry)   KEYS[3] paused until
# KEYS[4] breaker   KEYS[5] probe (the permit id of the one half-open probe)
# KEYS[6] calls (permit id -> when granted, moved on to when its call was sent)
# KEYS[7] when the last permit was due on the pacing schedule
# ARGV[1] now   ARGV[2] permit id, or '' to only look   ARGV[3] lease seconds of a permit
# ARGV[4] rate per second unless configured   ARGV[5] max in flight unless configured
# ARGV[6] guard seconds   ARGV[7] breaker cooldown seconds   ARGV[8] how long the log of calls is kept
# (the longest window of any accepted rate: a rate lowered later still sees the calls before it)
# The whole gate in one step, in this order: the fleet pause; the breaker (open: wait out the cool
# down; half-open: only one probe at a time); a free in-flight slot; the rate. The rate allows
# k = max(1, floor(rate)) calls in any window of k / rate seconds (lengthened by the guard), so
# it is exact at any rate (0.005/s: one call in any 200 s); permits are also paced one interval
# (1 / rate) apart, up to half an interval early, on a schedule that does not drift.
# Returns {1, probe 0|1} when granted; {0, seconds to wait (string), reason} when not, or when only
# looking {0, '0', 'ready'} if a permit could be granted now. (Strings: Lua truncates numbers.)
_ACQUIRE = """
local now = tonumber(ARGV[1])
local looking = ARGV[2] == ''
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then return {0, tostring(paused - now), 'paused'} end
local probe = 0
if redis.call('HGET', KEYS[4], 'state') == 'open' then
  local reopen = tonumber(redis.call('HGET', KEYS[4], 'opened_at') or '0') + tonumber(ARGV[7])
  if now < reopen then return {0, tostring(reopen - now), 'breaker-open'} end
  -- The probe key holds "<permit id>|<until>": its time, not Redis's expiry, says whether it is held.
  local held = tonumber(string.match(redis.call('GET', KEYS[5]) or '', '|(.+)$') or '0')
  if held > now then return {0, tostring(math.max(0.05, math.min(1, held - now))), 'probe'} end
  probe = 1
end
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate_per_second') or ARGV[4])
local cap = tonumber(redis.call('HGET', KEYS[1], 'max_in_flight') or ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= cap then return {0, '0.05', 'in-flight'} end
local limit = math.max(1, math.floor(rate))
local window = limit / rate + tonumber(ARGV[6])
local interval = 1 / rate
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[6])
local wait = 0
if count >= limit then
  local blocking = redis.call('ZRANGE', KEYS[6], count - limit, count - limit, 'WITHSCORES')
  wait = tonumber(blocking[2]) + window - now
end
-- KEYS[7] holds when the last permit was due; the next is one interval later at the rate in force
-- now, so a schedule made at another rate is not kept after the rate changed.
local due = tonumber(redis.call('GET', KEYS[7]) or '0') + interval
wait = math.max(wait, due - interval / 2 - now)
if wait > 0 then return {0, tostring(wait), 'rate'} end
if looking then return {0, '0', 'ready'} end
local lease_ms = math.ceil(tonumber(ARGV[3]) * 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
redis.call('ZADD', KEYS[6], now, ARGV[2])
redis.call('PEXPIRE', KEYS[6], math.ceil(tonumber(ARGV[8]) * 1000))
redis.call('SET', KEYS[7], tostring(math.max(due, now)), 'PX', math.ceil(window * 1000) + 1000)
if probe == 1 then redis.call('SET', KEYS[5], ARGV[2] .. '|' .. (now + tonumber(ARGV[3])), 'PX', lease_ms) end
return {1, probe}
"""

# KEYS[1] in flight   KEYS[2] calls   KEYS[3] breaker   KEYS[4] probe   KEYS[5] paused until
# ARGV[1] permit id   ARGV[2] how its call went: "ok" | "failed" (transient) | "sent" (outcome not
# known: an error in the worker) | "unused" (no call was made)   ARGV[3] now
# ARGV[4] breaker failure threshold   ARGV[5] pause the fleet until (epoch s), or ''
# Gives a permit back in one step: extends the fleet pause first (never shortens it), tells the
# breaker ("failed" counts a consecutive failure and opens it at the threshold, or re-opens it;
# "ok" closes it), keeps the call in the rate window unless it was never made, frees the probe
# only if this permit was the probe, and frees the in-flight slot last.
_RELEASE = """
local now = tonumber(ARGV[3])
if ARGV[5] ~= '' then
  local until_at = tonumber(ARGV[5])
  if until_at > tonumber(redis.call('GET', KEYS[5]) or '0') then
    redis.call('SET', KEYS[5], ARGV[5], 'EX', math.ceil(until_at - now) + 1)
  end
end
if ARGV[2] == 'failed' then
  local failures = redis.call('HINCRBY', KEYS[3], 'failures', 1)
  if redis.call('HGET', KEYS[3], 'state') == 'open' or failures >= tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[3], 'state', 'open', 'opened_at', ARGV[3])
  end
elseif ARGV[2] == 'ok' then
  redis.call('HSET', KEYS[3], 'state', 'closed', 'failures', 0)
elseif ARGV[2] == 'unused' then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if string.match(redis.call('GET', KEYS[4]) or '', '^([^|]*)') == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] paused until   ARGV[1] epoch seconds until which to pause   ARGV[2] now
# Extends the fleet pause, never shortens it; the key expires soon after the pause ends.
_PAUSE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', math.ceil(tonumber(ARGV[1]) - tonumber(ARGV[2])) + 1)
end
return 1
"""

# The longest window of any accepted rate (one call in 1 / MIN_FLEET_RATE_PER_SECOND seconds), plus a
# second: how long the log of calls outlives the last one.
CALL_LOG_SECONDS = 1 / MIN_FLEET_RATE_PER_SECOND + 1.0
REASONS = {
    "paused": PAUSED_REASON,
    "breaker-open": "circuit breaker open",
    "probe": "circuit breaker half-open, probe in flight",
    "in-flight": "the most UKSSDC calls allowed are already in flight",
    "rate": "fleet rate limit reached",
    "ready": "a permit is free now",
}


@dataclass(frozen=True)
class Permit:
    """Leave to make one UKSSDC call; give it back with `FleetGate.release`."""

    id: str
    probe: bool


@dataclass(frozen=True)
class Wait:
    """No permit yet: try again in `seconds`, because of `reason`."""

    seconds: float
    reason: str


@dataclass(frozen=True)
class FleetLimits:
    rate_per_second: float
    max_in_flight: int


def rate_window(rate_per_second: float) -> tuple[int, float]:
    """The rate as (calls, in any window of this many seconds), exact at any rate:
    50 -> (50, 1.0), 2.5 -> (2, 0.8), 0.5 -> (1, 2.0), 0.005 -> (1, 200.0). The gate lengthens the
    window by its guard interval."""
    calls = max(1, math.floor(rate_per_second))
    return calls, calls / rate_per_second


def check_rate(rate_per_second: float) -> float:
    """`rate_per_second` if the gate accepts it; ValueError naming the lowest accepted rate otherwise."""
    if not math.isfinite(rate_per_second) or rate_per_second < MIN_FLEET_RATE_PER_SECOND:
        raise ValueError(f"the fleet rate must be at least {MIN_FLEET_RATE_PER_SECOND} calls per second")
    return rate_per_second


class FleetGate:
    """Grants permits for UKSSDC calls across every worker process.

    Redis keys owned: ``ukcancel:fleet:config``, ``ukcancel:fleet:inflight``,
    ``ukcancel:fleet:paused_until``, ``ukcancel:fleet:breaker``, ``ukcancel:fleet:probe``,
    ``ukcancel:fleet:calls`` and ``ukcancel:fleet:next_due`` (see `ukcancel.keys`).
    """

    def __init__(
        self,
        connection: redis.Redis,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.lease_seconds = settings.ukssdc_connect_timeout_seconds + settings.ukssdc_timeout_seconds + 5
        self._acquire = connection.register_script(_ACQUIRE)
        self._release = connection.register_script(_RELEASE)
        self._pause = connection.register_script(_PAUSE)

    # -- run-time configuration ------------------------------------------------------------
    def limits(self) -> FleetLimits:
        raw = as_text_dict(self.connection.hgetall(keys.FLEET_CONFIG))
        rate = float(raw["rate_per_second"]) if "rate_per_second" in raw else self.settings.fleet_rate_per_second
        in_flight = int(raw["max_in_flight"]) if "max_in_flight" in raw else self.settings.fleet_max_in_flight
        return FleetLimits(rate, in_flight)

    def configure(self, rate_per_second: float | None = None, max_in_flight: int | None = None) -> FleetLimits:
        if rate_per_second is not None:
            self.connection.hset(keys.FLEET_CONFIG, "rate_per_second", repr(float(check_rate(rate_per_second))))
        if max_in_flight is not None:
            if max_in_flight < 1:
                raise ValueError("max_in_flight must be at least 1")
            self.connection.hset(keys.FLEET_CONFIG, "max_in_flight", str(int(max_in_flight)))
        return self.limits()

    # -- permits ---------------------------------------------------------------------------
    def acquire(
        self,
        max_wait: float | None = None,
        wanted: Callable[[], bool] | None = None,
        while_waiting: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    ) -> Permit | Wait:
        """A permit, waiting up to `max_wait` seconds for one; otherwise how long to wait and why.

        A wait longer than what is left of `max_wait` is answered at once, without sleeping: the
        caller ends, and the reconciler sends a turn again when a permit is near (`next_permit_in`).
        `wanted` is asked after each wait: once the work is gone (withdrawn, or finished by another
        run) the answer is `Wait(0, UNWANTED_REASON)` and no permit is taken, so a withdrawn
        command never spends one of the fleet's calls, nor moves its pacing schedule on.
        `while_waiting` is entered before the first sleep and left when the wait ends (a turn
        covers its lane only while it really waits). Each acquire is one observation of
        `ukcancel_fleet_permit_wait_seconds`: granted, or deferred.
        """
        max_wait = self.settings.fleet_max_wait_seconds if max_wait is None else max_wait
        started = self.clock()
        deadline = started + max_wait
        waited = False
        with contextlib.ExitStack() as waiting:
            while True:
                if waited and wanted is not None and not wanted():
                    return Wait(0.0, UNWANTED_REASON)
                outcome = self._try(uuid.uuid4().hex)
                if isinstance(outcome, Permit):
                    metrics.PERMIT_WAIT_SECONDS.labels("granted").observe(self.clock() - started)
                    return outcome
                if self.clock() + outcome.seconds > deadline:
                    metrics.PERMIT_WAIT_SECONDS.labels("deferred").observe(self.clock() - started)
                    return outcome
                if not waited and while_waiting is not None:
                    waiting.enter_context(while_waiting())
                self.sleep(outcome.seconds)
                waited = True

    def next_permit_in(self) -> Wait:
        """How long until a permit could be granted, and why (0 seconds: now); takes nothing."""
        outcome = self._try("")
        assert isinstance(outcome, Wait)
        return outcome

    def _try(self, permit_id: str) -> Permit | Wait:
        limits_default = (self.settings.fleet_rate_per_second, self.settings.fleet_max_in_flight)
        reply = self._acquire(
            keys=[
                keys.FLEET_CONFIG, keys.FLEET_INFLIGHT, keys.FLEET_PAUSED_UNTIL, keys.FLEET_BREAKER,
                keys.FLEET_PROBE, keys.FLEET_CALLS, keys.FLEET_NEXT_DUE,
            ],
            args=[
                repr(self.clock()), permit_id, repr(self.lease_seconds), repr(limits_default[0]), limits_default[1],
                repr(self.settings.fleet_guard_seconds), repr(self.settings.breaker_cooldown_seconds),
                repr(CALL_LOG_SECONDS + self.settings.fleet_guard_seconds),
            ],
        )
        if reply[0] == 1:
            return Permit(permit_id, probe=reply[1] == 1)
        reason = as_text(reply[2])
        return Wait(float(as_text(reply[1])), REASONS.get(reason, reason))

    @contextlib.contextmanager
    def permit(
        self, max_wait: float | None = None, *, reserved: Permit | None = None, rand: Rand = random.uniform
    ) -> Iterator[Permit]:
        """One UKSSDC call under a permit (`reserved`, or one waited for up to `max_wait` seconds).

        No permit in time raises `Reschedule` (spread, so deferred work does not stampede back).
        The permit is stamped as the block starts, and from then on its call counts in the rate
        window whatever happens. A `CallFailure` raised in the block gives the permit back telling
        the breaker whether the failure was transient, and pausing the fleet for a 429/503
        Retry-After in the same step (so no other worker's call slips in); any other exception
        gives it back as sent with its outcome unknown; success closes the breaker.
        """
        if reserved is None:
            outcome = self.acquire(max_wait)
            if isinstance(outcome, Wait):
                raise Reschedule(spread(outcome.seconds, rand), outcome.reason)
            reserved = outcome
        self.stamp(reserved)
        try:
            yield reserved
        except CallFailure as failure:
            pause = None if failure.fleet_pause is None else self.clock() + failure.fleet_pause
            self.release(reserved, FAILED if failure.transient else OK, pause_until=pause)
            raise
        except BaseException:
            self.release(reserved, SENT)
            raise
        self.release(reserved, OK)

    def stamp(self, permit: Permit) -> None:
        """Move the permit's time in the rate window to now, just before its call is sent.

        Between a permit and its call a worker claims and reads its command; re-stamping makes
        the window count calls as the UKSSDC receives them. It only ever moves a time later,
        which can delay later permits but never let more through.
        """
        self.connection.zadd(keys.FLEET_CALLS, {permit.id: self.clock()}, xx=True, gt=True)

    def release(self, permit: Permit, outcome: CallOutcome, *, pause_until: float | None = None) -> None:
        """Give the permit back, saying how its call went (`CallOutcome`)."""
        self._release(
            keys=[keys.FLEET_INFLIGHT, keys.FLEET_CALLS, keys.FLEET_BREAKER, keys.FLEET_PROBE, keys.FLEET_PAUSED_UNTIL],
            args=[
                permit.id, outcome, repr(self.clock()), self.settings.breaker_failure_threshold,
                "" if pause_until is None else repr(pause_until),
            ],
        )

    def release_unused(self, permit: Permit) -> None:
        """Give back a permit no call was made with (nothing to do): the breaker learns nothing
        from it, and its place in the rate window goes back to the fleet."""
        self.release(permit, UNUSED)

    def pause(self, seconds: float) -> None:
        """Stop every worker calling the UKSSDC for `seconds` (a Retry-After)."""
        now = self.clock()
        self._pause(keys=[keys.FLEET_PAUSED_UNTIL], args=[repr(now + seconds), repr(now)])

    # -- state, for /readyz and metrics ----------------------------------------------------
    def breaker_state(self, now: float | None = None) -> dict[str, float | str | int]:
        now = self.clock() if now is None else now
        raw = as_text_dict(self.connection.hgetall(keys.FLEET_BREAKER))
        failures = int(raw.get("failures", 0))
        if raw.get("state") == OPEN:
            reopen_at = float(raw.get("opened_at", 0)) + self.settings.breaker_cooldown_seconds
            if now < reopen_at:
                return {"state": OPEN, "failures": failures, "retry_in": reopen_at - now}
            return {"state": HALF_OPEN, "failures": failures, "retry_in": 0.0}
        return {"state": CLOSED, "failures": failures, "retry_in": 0.0}

    def paused_for(self) -> float:
        """Seconds left of a fleet-wide pause (0 when none)."""
        return max(0.0, float(self.connection.get(keys.FLEET_PAUSED_UNTIL) or 0) - self.clock())

    def live_workers(self) -> list[str]:
        """The fleet's workers with a recent heartbeat (`live_workers`)."""
        return live_workers(self.connection)

    def in_flight(self) -> int:
        return int(self.connection.zcount(keys.FLEET_INFLIGHT, repr(self.clock()), "+inf"))

    def heartbeats(self) -> list[tuple[str, float]]:
        """Every worker that sent a heartbeat and was not forgotten, latest first (`worker_heartbeats`)."""
        return worker_heartbeats(self.connection)

    def status(self) -> dict[str, Any]:
        """The fleet's limits and state as `ukcancel fleet --json` and the console show them."""
        limits = self.limits()
        breaker = self.breaker_state()
        return {
            "rate_per_second": limits.rate_per_second,
            "max_in_flight": limits.max_in_flight,
            "in_flight": self.in_flight(),
            "paused_seconds": round(self.paused_for(), 1),
            "breaker": breaker["state"],
            "breaker_failures": breaker["failures"],
            "breaker_retry_in_seconds": round(float(breaker["retry_in"]), 1),
        }

    def resume(self) -> float:
        """Lift a fleet pause at once (an operator overruling a Retry-After); the seconds it had left."""
        left = self.paused_for()
        self.connection.delete(keys.FLEET_PAUSED_UNTIL)
        return left


# -- the workers' heartbeats (``ukcancel:workers``) ------------------------------------------------
def record_heartbeat(connection: redis.Redis, name: str, now: float | None = None) -> None:
    connection.zadd(keys.WORKERS, {name: time.time() if now is None else now})


def forget_worker(connection: redis.Redis, name: str) -> None:
    connection.zrem(keys.WORKERS, name)


def worker_heartbeats(connection: redis.Redis) -> list[tuple[str, float]]:
    """(worker name, epoch seconds of its last heartbeat), latest first, live or not."""
    return [(as_text(name), float(score)) for name, score in connection.zrevrange(keys.WORKERS, 0, -1, withscores=True)]


def live_workers(connection: redis.Redis, now: float | None = None) -> list[str]:
    """Workers that sent a heartbeat within the last `LIVE_WORKER_SECONDS`."""
    now = time.time() if now is None else now
    return [as_text(n) for n in connection.zrangebyscore(keys.WORKERS, now - LIVE_WORKER_SECONDS, "+inf")]
