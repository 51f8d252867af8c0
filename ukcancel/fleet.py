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
from fractions import Fraction

import redis

from ukcancel import keys, metrics
from ukcancel.retry import CallFailure, Rand, Reschedule, spread
from ukcancel.settings import Settings
from ukcancel.store import as_text, as_text_dict

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
PAUSED_REASON = "fleet paused by the UKSSDC's Retry-After"
UNWANTED_REASON = "the work was withdrawn or finished while it waited"
HEARTBEAT_SECONDS = 5.0
LIVE_WORKER_SECONDS = 3 * HEARTBEAT_SECONDS

# KEYS[1] in-flight sorted set (permit id -> lease expiry)
# ARGV[1] now   ARGV[2] permit id   ARGV[3] lease expiry   ARGV[4] max in flight
# Drops expired leases, then takes a slot if one is free. Returns 1 if taken, else 0.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] calls sorted set (permit id -> time the permit was granted, or its call was sent)
# KEYS[2] the time the next permit is due (pacing schedule)
# ARGV[1] now   ARGV[2] permit id   ARGV[3] calls allowed per window   ARGV[4] window seconds
# ARGV[5] pacing interval seconds (window / calls, without the guard)
# Drops permits that left the window. Grants when fewer than ARGV[3] remain in it AND the pacing
# schedule is due (up to half an interval early), so calls are spread evenly over the window
# instead of going out in a burst at its start. The schedule advances one interval per permit
# from when it was due, not from when the permit was taken, so it does not drift later.
# Returns "-1" when granted, else the seconds until it could be (a string: Lua would truncate
# a number to an integer).
_TAKE_RATE = """
local now, limit, window, interval = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local wait = 0
if count >= limit then
  local blocking = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  wait = tonumber(blocking[2]) + window - now
end
local due = tonumber(redis.call('GET', KEYS[2]) or '0')
wait = math.max(wait, due - interval / 2 - now)
if wait > 0 then return tostring(wait) end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
redis.call('SET', KEYS[2], tostring(math.max(due, now) + interval), 'PX', math.ceil(window * 1000) + 1000)
return '-1'
"""

# KEYS[1] breaker hash   KEYS[2] probe key
# ARGV[1] now   ARGV[2] failure threshold
# Counts a consecutive transient failure; opens the breaker at the threshold, and re-opens it
# when the failed call was the half-open probe. Returns 1 when the breaker is (now) open.
_RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[2])
if state == 'open' or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1])
  return 1
end
return 0
"""

# KEYS[1] pause key   ARGV[1] epoch seconds until which to pause   ARGV[2] now
# Extends the fleet pause, never shortens it; the key expires soon after the pause ends.
_PAUSE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', math.ceil(tonumber(ARGV[1]) - tonumber(ARGV[2])) + 1)
end
return 1
"""


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


def rate_window(rate_per_second: float) -> tuple[int, int]:
    """`rate_per_second` as (calls, per whole seconds): 2 -> (2, 1), 0.5 -> (1, 2), 2.5 -> (5, 2)."""
    fraction = Fraction(rate_per_second).limit_denominator(60)
    return max(1, fraction.numerator), max(1, fraction.denominator)


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
        self._take_slot = connection.register_script(_TAKE_SLOT)
        self._take_rate = connection.register_script(_TAKE_RATE)
        self._record_failure = connection.register_script(_RECORD_FAILURE)
        self._pause = connection.register_script(_PAUSE)

    # -- run-time configuration ------------------------------------------------------------
    def limits(self) -> FleetLimits:
        raw = as_text_dict(self.connection.hgetall(keys.FLEET_CONFIG))
        rate = float(raw["rate_per_second"]) if "rate_per_second" in raw else self.settings.fleet_rate_per_second
        in_flight = int(raw["max_in_flight"]) if "max_in_flight" in raw else self.settings.fleet_max_in_flight
        return FleetLimits(rate, in_flight)

    def configure(self, rate_per_second: float | None = None, max_in_flight: int | None = None) -> FleetLimits:
        if rate_per_second is not None:
            if not rate_per_second > 0:
                raise ValueError("rate_per_second must be positive")
            self.connection.hset(keys.FLEET_CONFIG, "rate_per_second", repr(float(rate_per_second)))
        if max_in_flight is not None:
            if max_in_flight < 1:
                raise ValueError("max_in_flight must be at least 1")
            self.connection.hset(keys.FLEET_CONFIG, "max_in_flight", str(int(max_in_flight)))
        return self.limits()

    # -- permits ---------------------------------------------------------------------------
    def acquire(self, max_wait: float | None = None, wanted: Callable[[], bool] | None = None) -> Permit | Wait:
        """A permit, waiting up to `max_wait` seconds for one; otherwise how long to wait and why.

        `wanted` is asked after each wait: once the work is gone (withdrawn, or finished by another
        run) the answer is `Wait(0, UNWANTED_REASON)` and no permit is taken, so a withdrawn
        command never spends one of the fleet's calls, nor moves its pacing schedule on.
        """
        max_wait = self.settings.fleet_max_wait_seconds if max_wait is None else max_wait
        started = self.clock()
        deadline = started + max_wait
        waited = False
        while True:
            if waited and wanted is not None and not wanted():
                return Wait(0.0, UNWANTED_REASON)
            outcome = self._try_acquire()
            if isinstance(outcome, Permit):
                metrics.PERMIT_WAIT_SECONDS.labels("granted").observe(self.clock() - started)
                return outcome
            if self.clock() + outcome.seconds > deadline:
                metrics.PERMIT_WAIT_SECONDS.labels("deferred").observe(self.clock() - started)
                return outcome
            self.sleep(outcome.seconds)
            waited = True

    def _try_acquire(self) -> Permit | Wait:
        now = self.clock()
        paused_until = float(self.connection.get(keys.FLEET_PAUSED_UNTIL) or 0)
        if paused_until > now:
            return Wait(paused_until - now, PAUSED_REASON)
        probe = False
        breaker = self.breaker_state(now)
        if breaker["state"] == OPEN:
            return Wait(max(0.05, breaker["retry_in"]), "circuit breaker open")
        if breaker["state"] == HALF_OPEN:
            if not self.connection.set(keys.FLEET_PROBE, "1", nx=True, ex=math.ceil(self.lease_seconds)):
                return Wait(1.0, "circuit breaker half-open, probe in flight")
            probe = True
        fleet = self.limits()
        permit_id = uuid.uuid4().hex
        if not self._take_slot(
            keys=[keys.FLEET_INFLIGHT], args=[repr(now), permit_id, repr(now + self.lease_seconds), fleet.max_in_flight]
        ):
            self._drop_probe(probe)
            return Wait(0.05, f"{fleet.max_in_flight} UKSSDC calls already in flight")
        calls, seconds = rate_window(fleet.rate_per_second)
        # A fresh reading of the clock: the permit's time is as close as possible to the call's.
        blocked_for = float(
            self._take_rate(
                keys=[keys.FLEET_CALLS, keys.FLEET_NEXT_DUE],
                args=[
                    repr(self.clock()),
                    permit_id,
                    calls,
                    repr(seconds + self.settings.fleet_guard_seconds),
                    repr(seconds / calls),
                ],
            )
        )
        if blocked_for > 0:
            self.connection.zrem(keys.FLEET_INFLIGHT, permit_id)
            self._drop_probe(probe)
            return Wait(max(0.01, blocked_for), "fleet rate limit reached")
        # A worker that got a 429/503 pauses the fleet before it frees its slot, so a pause set
        # while this permit was being taken is seen here: nothing slips in behind a Retry-After.
        paused_for = self.paused_for()
        if paused_for > 0:
            self.release_unused(Permit(permit_id, probe))
            return Wait(paused_for, PAUSED_REASON)
        return Permit(permit_id, probe)

    @contextlib.contextmanager
    def permit(
        self, max_wait: float | None = None, *, reserved: Permit | None = None, rand: Rand = random.uniform
    ) -> Iterator[Permit]:
        """One UKSSDC call under a permit (`reserved`, or one waited for up to `max_wait` seconds).

        No permit in time raises `Reschedule` (spread, so deferred work does not stampede back).
        The permit is stamped as the block starts. A `CallFailure` raised in the block pauses the
        fleet first when it carries a 429/503 Retry-After (before the slot is free, so no other
        worker's call slips in), then releases the permit telling the breaker whether the failure
        was transient; any other exception gives the permit back unused; success closes the breaker.
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
            if failure.fleet_pause is not None:
                self.pause(failure.fleet_pause)
            self.release(reserved, transient_failure=failure.transient)
            raise
        except BaseException:
            self.release_unused(reserved)
            raise
        self.release(reserved, transient_failure=False)

    def stamp(self, permit: Permit) -> None:
        """Move the permit's time in the rate window to now, just before its call is sent.

        Between a permit and its call a worker claims and reads its command; re-stamping makes
        the window count calls as the UKSSDC receives them. It only ever moves a time later,
        which can delay later permits but never let more through.
        """
        self.connection.zadd(keys.FLEET_CALLS, {permit.id: self.clock()}, xx=True, gt=True)

    def _drop_probe(self, probe: bool) -> None:
        if probe:
            self.connection.delete(keys.FLEET_PROBE)

    def release(self, permit: Permit, *, transient_failure: bool) -> None:
        """Tell the breaker how the call went, then give the slot back.

        In that order: a failure that opens the breaker is recorded before the slot is free, so
        no other worker's call slips through a breaker that should already be open.
        """
        if transient_failure:
            self._record_failure(
                keys=[keys.FLEET_BREAKER, keys.FLEET_PROBE],
                args=[repr(self.clock()), self.settings.breaker_failure_threshold],
            )
            self.connection.zrem(keys.FLEET_INFLIGHT, permit.id)
        else:
            pipe = self.connection.pipeline(transaction=True)
            pipe.hset(keys.FLEET_BREAKER, mapping={"state": CLOSED, "failures": 0})
            pipe.delete(keys.FLEET_PROBE)
            pipe.zrem(keys.FLEET_INFLIGHT, permit.id)
            pipe.execute()

    def release_unused(self, permit: Permit) -> None:
        """Give back a permit no call was made with (nothing to do): the breaker learns nothing
        from it, and its place in the rate window goes back to the fleet."""
        pipe = self.connection.pipeline(transaction=True)
        pipe.zrem(keys.FLEET_INFLIGHT, permit.id)
        pipe.zrem(keys.FLEET_CALLS, permit.id)
        if permit.probe:
            pipe.delete(keys.FLEET_PROBE)
        pipe.execute()

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


def live_workers(connection: redis.Redis, now: float | None = None) -> list[str]:
    """Workers that sent a heartbeat within the last `LIVE_WORKER_SECONDS`."""
    now = time.time() if now is None else now
    return [as_text(n) for n in connection.zrangebyscore(keys.WORKERS, now - LIVE_WORKER_SECONDS, "+inf")]
