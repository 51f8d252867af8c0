"""The schedule of cancel commands, kept in the service's Redis: what waits, what is due later, what runs.

A Celery message here does not name a command: it is a *turn*, leave to run "the next command".
What a turn finds is decided by this schedule, never by the broker:

- **waiting**: per-user lists of command ids, oldest first, and a round-robin ring of the users
  with waiting commands, so a 5,000-item batch ahead of a single cancel does not make it wait. A
  user whose line was empty goes to the head of the ring (its command is the next claimed), but
  newcomers never take two claims in a row from the users in line, and a user served within the
  last two claims per user in line joins at the tail;
- **due**: commands to run again at a given time (retries after a transient failure, and
  commands that found the fleet busy), ordered by that time;
- **running**: a lease per claimed command, with an expiry that the worker running it renews.
  A lease that expires (its worker was killed, or lost Redis for longer than a lease) is taken
  over by the next turn, and the command resumes as an ambiguous attempt.

A turn first checks that something is runnable (if not, it ends at once: no fleet permit, no
UKSSDC call), then takes a permit, and only then claims, in this order: an expired lease, a due
command, then the oldest command of the user at the head of the ring. Claiming is one script, so
two turns never take the same work; claiming after the permit keeps the order fair (a newcomer
is not queued behind commands other turns claimed before a wait).

Turns are not sent one per command. `enqueue` sends a few (one per command, up to the lanes not
already running); a turn that ran a command sends its successor while work remains; and the reconciler
(`ukcancel.reconciler`) sends what is missing. So withdrawn work leaves no line of empty turns
behind it, and a lost turn (broker restart, a purged queue, a killed worker) is replaced. A turn
that finds no permit ends without a successor: the reconciler sends one when a permit is near.

What must always hold, and what makes it hold (docs/developers/dispatch.md has the whole table,
and tests/unit/test_dispatch_model.py checks each after every step of random interleavings):

- I1 every accepted command ends once faults stop: leases lapse and are taken over, the due list
  keeps retries, and the reconciler sends the turns Redis says are missing;
- I2 one results entry per terminal command, its callback pending until settled: the transition
  script that ends a command writes both (`ukcancel.command.TRANSITION_LUA`);
- I3 states never go back: every transition is that script; entering and leaving `running` are
  the lease-checked steps here (`start`, `retry_later`, `finish`), so a run whose lease was taken
  over changes nothing and a refused step is never half-done;
- I4 no window over the fleet limit: the gate's one script (`ukcancel.fleet`);
- I5 a waiting fleet does not spin: no successor without a permit, turns waiting for one cover
  their lane (``ukcancel:turns:waiting``), and the reconciler holds the lanes while the gate says
  no permit is near;
- I6 an accepted command exists: the broker carries only anonymous turns (`DispatchError` delays
  a turn, never the command);
- I7 an attempt is counted only when a request was sent: after the run's first call, under its lease.
"""

from __future__ import annotations

import contextlib
import logging
import string
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ukcancel import keys
from ukcancel.command import (
    ACTIVE_IN_ORDER,
    COMPLETED,
    QUEUED,
    RETRYING,
    TRANSITION_LUA,
    CancelCommand,
    CommandRegistry,
    CommandState,
    Transition,
    completion_fields,
    with_constants,
)
from ukcancel.dispatch import DispatchError
from ukcancel.store import as_text

# How long the newcomer mark and a user's last claim from the ring are kept: a day, far longer
# than the 1,000 s between two claims at the lowest accepted fleet rate, so both rules hold at
# any rate. Every claim from the ring moves the mark on; the expiry only clears a mark that no
# claim will move (a release without it sharing Redis during an upgrade: newcomers then join at
# the tail, as that release has them do).
FAIRNESS_MEMORY_SECONDS = 86_400

# KEYS[1] the user's waiting list   KEYS[2] the round-robin ring of users   KEYS[3] the newcomer mark
# KEYS[4] the count of claims from the ring   KEYS[5] that count at the user's last claim from it
# ARGV[1] user id   ARGV[2..] command ids to append
# Appends the ids; puts the user on the ring when its list was empty before and the user is not
# on the ring already (a withdrawal can empty a list while its user still waits for a turn). Such
# a newcomer goes to the head of the ring, so its first command is the next one claimed, unless
# (then it goes to the tail, as in a plain round robin):
# - the mark says a newcomer went ahead and the ring has not served a user in line since, so
#   newcomers never take two claims in a row from the users in line; or
# - the user was served within the last two claims per user on the ring, so a user whose single
#   commands come one after another is not a newcomer every time (its turn comes round as the others').
_PUSH = string.Template("""
local before = redis.call('LLEN', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
if before == 0 and not redis.call('LPOS', KEYS[2], ARGV[1]) then
  local last = redis.call('GET', KEYS[5])
  local rested = not last or
    tonumber(redis.call('GET', KEYS[4]) or '0') - tonumber(last) >= 2 * redis.call('LLEN', KEYS[2])
  if rested and redis.call('SET', KEYS[3], 'ahead', 'NX', 'EX', $memory_seconds) then
    redis.call('LPUSH', KEYS[2], ARGV[1])
  else
    redis.call('RPUSH', KEYS[2], ARGV[1])
  end
end
return before
""").substitute(memory_seconds=FAIRNESS_MEMORY_SECONDS)

# KEYS[1] leases (command id -> expiry)   KEYS[2] lease holders (command id -> holder)
# KEYS[3] due (command id -> due time)    KEYS[4] the round-robin ring of users   KEYS[5] the newcomer mark
# KEYS[6] the count of claims from the ring
# ARGV[1] now   ARGV[2] holder (the turn's task id)   ARGV[3] lease expiry   ARGV[4] key prefix of
# the per-user lists   ARGV[5] key prefix of the per-user count at their last claim from the ring
# Takes the oldest expired lease, else the earliest due command, else the oldest command of the
# user at the head of the ring (moving that user to the tail if it has more waiting). Leases it
# to the holder and returns {command id, how it was found: "takeover" | "due" | "waiting"}, or
# false when nothing can run now. A claim from the ring moves the newcomer mark on: "ahead" (this
# claim serves the newcomer put at the head) becomes "served", which the next claim from the ring
# (a user that was in line) clears; only then may another newcomer go ahead. Each claim from the
# ring is counted, and the user it served remembers the count. (Per-user keys are derived from
# ARGV[4] and ARGV[5], so this script needs a single Redis node, not a cluster.)
_CLAIM = string.Template("""
local function lease(id, kind)
  redis.call('ZADD', KEYS[1], ARGV[3], id)
  redis.call('HSET', KEYS[2], id, ARGV[2])
  return {id, kind}
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if expired[1] then return lease(expired[1], 'takeover') end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 1)
if due[1] then
  redis.call('ZREM', KEYS[3], due[1])
  return lease(due[1], 'due')
end
local mark = redis.call('GET', KEYS[5])
local users = redis.call('LLEN', KEYS[4])
for i = 1, users do
  local user = redis.call('LPOP', KEYS[4])
  if not user then break end
  local list = ARGV[4] .. user
  local id = redis.call('LPOP', list)
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[4], user) end
  if id then
    redis.call('SET', ARGV[5] .. user, redis.call('INCR', KEYS[6]), 'EX', $memory_seconds)
    if mark == 'ahead' then
      redis.call('SET', KEYS[5], 'served', 'EX', $memory_seconds)
    elseif mark then
      redis.call('DEL', KEYS[5])
    end
    return lease(id, 'waiting')
  end
end
redis.call('DEL', KEYS[5])
return false
""").substitute(memory_seconds=FAIRNESS_MEMORY_SECONDS)

# KEYS[1] leases   KEYS[2] due   KEYS[3] the round-robin ring of users   KEYS[4] turns on their way
# ARGV[1] now   ARGV[2] key prefix of the per-user lists   ARGV[3] 1 when a turn starts
# With ARGV[3], takes one off the turns on their way (this one has arrived). Returns 1 when a turn
# could claim something now (an expired lease, a due command, a waiting one), else 0.
_RUNNABLE = """
if ARGV[3] == '1' and tonumber(redis.call('GET', KEYS[4]) or '0') > 0 then redis.call('DECR', KEYS[4]) end
if redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1]) > 0 then return 1 end
if redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[1]) > 0 then return 1 end
for _, user in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if redis.call('LLEN', ARGV[2] .. user) > 0 then return 1 end
end
return 0
"""

# KEYS[1] leases   KEYS[2] lease holders
# ARGV[1] command id   ARGV[2] holder   ARGV[3] new expiry
# Extends the lease only while this holder has it; returns 1 if extended, 0 if it was taken over.
_RENEW = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS[1] leases   KEYS[2] lease holders
# ARGV[1] command id   ARGV[2] holder
# Ends this holder's lease (a lease taken over by another holder is left alone), for a claimed
# command that needs no more turns (terminal, expired or withdrawn). Returns 1 if this holder had it.
_RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] leases   KEYS[2] lease holders   KEYS[3] due   KEYS[4] command hash   KEYS[5] results stream
# KEYS[6] callback outbox
# ARGV[1] holder   ARGV[2] step: "start" | "retry" | "finish"   ARGV[3] due time (epoch s) for "retry"
# ARGV[4..] the arguments of `transition` (`ukcancel.command.TRANSITION_LUA`; ARGV[4] is the command id)
# Only while ARGV[1] holds the command's lease, runs the transition and, for "retry" and "finish",
# ends the lease in the same step: "retry" puts a command that is not terminal on the due list
# (moved to retrying, or already elsewhere: never left on no list); "finish" needs no more turns.
# Returns the transition's reply, or {-2, ""} when this holder no longer has the lease (taken over:
# the run that holds it decides; this one changes nothing).
_STEP = TRANSITION_LUA + with_constants("""
local id = ARGV[4]
if redis.call('HGET', KEYS[2], id) ~= ARGV[1] then return {-2, ''} end
local reply = transition(KEYS[4], KEYS[5], KEYS[6], {unpack(ARGV, 4)})
if ARGV[2] ~= 'start' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  local state = reply[2]
  if ARGV[2] == 'retry' and reply[1] ~= -1 and state ~= $COMPLETED and state ~= $ABORTED then
    redis.call('ZADD', KEYS[3], ARGV[3], id)
  end
end
return reply
""")

# KEYS[1] leases   KEYS[2] due   KEYS[3] the round-robin ring of users   KEYS[4] turns waiting for a permit
# ARGV[1] now   ARGV[2] key prefix of the per-user lists
# Returns {waiting, due now, expired leases, live leases, due later, seconds until the next due
# command or lease expiry (-1: none), turns waiting for a permit} as strings: the figures the
# reconciler and metrics need.
_COUNTS = """
local now = tonumber(ARGV[1])
local waiting = 0
for _, user in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  waiting = waiting + redis.call('LLEN', ARGV[2] .. user)
end
local due_now = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local expired = redis.call('ZCOUNT', KEYS[1], '-inf', now)
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local later = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local next_at = -1
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local first = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] then
    local at = tonumber(first[2]) - now
    if next_at < 0 or at < next_at then next_at = at end
  end
end
local turns = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
return {tostring(waiting), tostring(due_now), tostring(expired), tostring(live), tostring(later), tostring(next_at),
        tostring(turns)}
"""

log = logging.getLogger(__name__)

SendTurns = Callable[[int], None]
Clock = Callable[[], float]
PUSH_CHUNK = 1000
# A lease step refused because another run holds the lease now (see `Schedule.start` and on).
LEASE_LOST = Transition(False, None, held=False)
TAKEOVER, DUE, WAITING = "takeover", "due", "waiting"


@dataclass(frozen=True)
class Claim:
    """A command a turn now holds the lease of, and how it was found (`TAKEOVER`, `DUE` or `WAITING`)."""

    command_id: str
    found: str

    @property
    def takeover(self) -> bool:
        """The command's lease had expired: an earlier run may have reached the UKSSDC."""
        return self.found == TAKEOVER


@dataclass(frozen=True)
class ScheduleCounts:
    """How the schedule stands at one moment."""

    waiting: int  # in the users' lists
    due_now: int  # due commands whose time has come
    expired_leases: int  # claimed commands whose worker stopped renewing
    live_leases: int  # commands being run now
    due_later: int
    next_change_in: float | None  # seconds until a due command or a lease falls due
    waiting_turns: int = 0  # turns that arrived and wait for a permit (they will claim)

    @property
    def due(self) -> int:
        """Every command on the due list, whenever it falls due."""
        return self.due_now + self.due_later

    @property
    def runnable(self) -> int:
        """Commands a turn could claim right now."""
        return self.waiting + self.due_now + self.expired_leases


@dataclass(frozen=True)
class StagedCommands:
    """Commands `Schedule.stage` wrote into a caller's pipeline: once the caller has executed
    it, `send_turns(results)` sends the turns they need (from the reads staged with them)."""

    schedule: Schedule
    count: int
    reads_at: int  # where the staged reads' replies are in the pipeline's results

    def send_turns(self, results: Sequence[Any]) -> None:
        running, on_their_way = results[self.reads_at], results[self.reads_at + 1]
        self.schedule.send_turns_for(self.count, int(running), int(on_their_way or 0))


class Schedule:
    """The schedule: enqueues commands, hands them to turns, leases, reschedules and releases them.

    Redis keys owned: ``ukcancel:fair:users``, ``ukcancel:fair:q:{user_id}``, ``ukcancel:fair:jump``,
    ``ukcancel:fair:sequence``, ``ukcancel:fair:last_served:{user_id}``, ``ukcancel:due``,
    ``ukcancel:leases`` and ``ukcancel:lease:holders`` (see `ukcancel.keys`).
    """

    def __init__(
        self,
        connection: redis.Redis,
        registry: CommandRegistry,
        dispatch: SendTurns,
        *,
        lanes: int = 6,
        lease_seconds: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        self.connection = connection
        self.registry = registry
        self.dispatch = dispatch  # sends n turns to the broker
        self.lanes = lanes  # turns to keep going while work waits
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._claim = connection.register_script(_CLAIM)
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)
        self._step = connection.register_script(_STEP)
        self._counts = connection.register_script(_COUNTS)
        self._runnable = connection.register_script(_RUNNABLE)

    # -- in -----------------------------------------------------------------------------------
    def enqueue(self, commands: Sequence[CancelCommand]) -> None:
        """Store the commands and their places in line in one round trip, then send turns for them.

        A broker that refuses the turns loses nothing: the commands are queued in Redis, and the
        reconciler sends their turns once the broker takes them again (logged, not raised).
        """
        with self.connection.pipeline(transaction=True) as pipe:
            staged = self.stage(commands, pipe)
            results = pipe.execute()
        staged.send_turns(results)

    def stage(self, commands: Sequence[CancelCommand], pipeline: redis.client.Pipeline) -> StagedCommands:
        """Add the commands' records and places in line to `pipeline`, which the caller executes
        (rq's convention: a method given a pipeline never executes it), with the reads that decide
        their turns; the caller then hands the pipeline's results to `StagedCommands.send_turns`.
        In a caller's WATCH/MULTI transaction the commands exist exactly when its EXEC succeeds."""
        self.registry.add_many(commands, pipeline)
        by_user: dict[str, list[str]] = defaultdict(list)
        for command in commands:
            by_user[command.user_id].append(command.id)
        for user_id, ids in by_user.items():
            # Lua's unpack() takes a few thousand values at most (a 10,000-item batch would fail).
            for start in range(0, len(ids), PUSH_CHUNK):
                chunk = ids[start : start + PUSH_CHUNK]
                # EVAL, not a registered script: redis-py checks a pipeline's registered scripts with
                # SCRIPT EXISTS before every execute, one more round trip per enqueue. The text is
                # sent with the call, so a server that lost its script cache still runs it.
                pipeline.eval(_PUSH, 5, keys.fair_queue(user_id), keys.FAIR_USERS, keys.FAIR_JUMP, keys.FAIR_SEQUENCE,
                              keys.fair_last_served(user_id), user_id, *chunk)
        # Read in the same transaction, after the push: every lane running now will see these
        # commands when it finishes and send its successor, and every turn on its way will claim
        # them, so only lanes that neither covers need a new turn (most enqueues under load send none).
        reads_at = len(pipeline)
        pipeline.zcount(keys.LEASES, f"({self.clock()!r}", "+inf")
        pipeline.get(keys.TURNS_ON_THEIR_WAY)
        return StagedCommands(self, len(commands), reads_at)

    def send_turns_for(self, count: int, running: int, on_their_way: int) -> None:
        """Turns for `count` new commands, for the lanes that neither a running command nor a turn
        on its way covers; a broker that refuses them is logged (the reconciler sends them later)."""
        turns = min(count, self.lanes - min(self.lanes, running + on_their_way))
        if turns:
            try:
                self.send_turns(turns)
            except DispatchError as exc:
                log.warning("%d command(s) queued; their turns wait for the broker (the reconciler sends them): %s",
                            count, exc)

    def send_turns(self, count: int) -> None:
        """Send `count` turns, counted as on their way until each makes its first claim.

        Raises `DispatchError` (the count is taken back) when the broker refuses them.
        """
        self.connection.incrby(keys.TURNS_ON_THEIR_WAY, count)
        try:
            self.dispatch(count)
        except DispatchError:
            self.connection.decrby(keys.TURNS_ON_THEIR_WAY, count)
            raise

    def set_turns_on_their_way(self, count: int) -> None:
        """What the broker says (the reconciler's correction of the count)."""
        self.connection.set(keys.TURNS_ON_THEIR_WAY, count)

    # -- a turn's work ----------------------------------------------------------------------------
    def start_turn(self) -> bool:
        """A turn has arrived (it is no longer on its way); whether it can claim anything now."""
        return self._runnable_now(started=True)

    def runnable_now(self) -> bool:
        """Whether a turn could claim something now (asked while a turn waits for a permit)."""
        return self._runnable_now(started=False)

    def _runnable_now(self, started: bool) -> bool:
        return bool(
            self._runnable(
                keys=[keys.LEASES, keys.DUE, keys.FAIR_USERS, keys.TURNS_ON_THEIR_WAY],
                args=[repr(self.clock()), keys.fair_queue(""), "1" if started else "0"],
            )
        )

    def claim(self, holder: str) -> Claim | None:
        """The command this turn now leases (expired lease, due, then round robin), or None."""
        now = self.clock()
        found = self._claim(
            keys=[keys.LEASES, keys.LEASE_HOLDERS, keys.DUE, keys.FAIR_USERS, keys.FAIR_JUMP, keys.FAIR_SEQUENCE],
            args=[repr(now), holder, repr(now + self.lease_seconds), keys.fair_queue(""), keys.fair_last_served("")],
        )
        if not found:
            return None
        return Claim(as_text(found[0]), as_text(found[1]))

    def renew(self, command_id: str, holder: str) -> bool:
        """Extend the lease; False when another turn has taken it over."""
        expiry = self.clock() + self.lease_seconds
        return bool(self._renew(keys=[keys.LEASES, keys.LEASE_HOLDERS], args=[command_id, holder, repr(expiry)]))

    @contextlib.contextmanager
    def holding(self, command_id: str, holder: str) -> Iterator[None]:
        """Renew the command's lease every third of a lease while the block runs.

        A renewal that fails (Redis away) is retried at the next beat; one that finds the lease
        taken over stops renewing: the other run's outcome and this one's race, and the first
        terminal transition wins.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_seconds / 3):
                try:
                    if not self.renew(command_id, holder):
                        log.warning("command %s: lease taken over by another run", command_id)
                        return
                except redis.RedisError as exc:
                    log.warning("command %s: lease renewal failed: %s", command_id, exc)
                except Exception:  # a defect must not silently end the renewals (the lease would lapse)
                    log.exception("command %s: lease renewal failed", command_id)

        thread = threading.Thread(target=beat, name=f"ukcancel-lease-{command_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(1.0)

    def continue_lane(self) -> bool:
        """After a turn ran a command: send its successor while work is runnable and lanes are free.

        Returns whether a turn was sent. The reconciler covers a successor that is lost.
        """
        counts = self.counts()
        if counts.runnable == 0 or counts.live_leases >= self.lanes:
            return False
        self.send_turns(1)
        return True

    # -- leaving and entering `running`: one script each, checked against the lease holder ----------
    def start(self, command_id: str, holder: str) -> Transition:
        """queued/retrying (or running, taken over) -> running, while `holder` has the lease."""
        return self._run_step(
            command_id, holder, "start", "", CommandState.RUNNING, (QUEUED, RETRYING, CommandState.RUNNING), {"next_attempt_at": None}
        )

    def retry_later(self, command_id: str, holder: str, at: float, error: str) -> Transition:
        """running -> retrying, due again at `at` (epoch seconds), ending the lease; one step."""
        return self._run_step(
            command_id, holder, "retry", repr(at), RETRYING, (CommandState.RUNNING,), {"last_error": error, "next_attempt_at": at}
        )

    def finish(
        self, command_id: str, holder: str, result: list[Any], *, server_ok: int | None = None, error: str | None = None
    ) -> Transition:
        """Complete with the final tuple (results entry and callback outbox in the same step) and end
        the lease. A command already terminal keeps its first result; its lease ends all the same."""
        fields = completion_fields(result, server_ok, error)
        return self._run_step(command_id, holder, "finish", "", COMPLETED, ACTIVE_IN_ORDER, fields)

    def _run_step(
        self,
        command_id: str,
        holder: str,
        step: str,
        due: str,
        to_state: str,
        allowed: Sequence[str],
        fields: dict[str, Any],
    ) -> Transition:
        reply = self._step(
            keys=[keys.LEASES, keys.LEASE_HOLDERS, keys.DUE, *self.registry.transition_keys(command_id)],
            args=[holder, step, due, *self.registry.transition_args(command_id, to_state, allowed, fields=fields)],
        )
        if reply[0] == -2:
            return LEASE_LOST
        return Transition.from_reply(reply)

    def release(self, command_id: str, holder: str) -> bool:
        """End the lease of a command that needs no more turns (terminal, expired or withdrawn)."""
        return bool(self._release(keys=[keys.LEASES, keys.LEASE_HOLDERS], args=[command_id, holder]))

    def remove_waiting(self, command: CancelCommand) -> None:
        """Take a command out of its user's line (it was withdrawn, or its turn could not be sent)."""
        self.connection.lrem(keys.fair_queue(command.user_id), 1, command.id)

    # -- how it stands ------------------------------------------------------------------------
    def counts(self) -> ScheduleCounts:
        raw = self._counts(
            keys=[keys.LEASES, keys.DUE, keys.FAIR_USERS, keys.TURNS_WAITING], args=[repr(self.clock()), keys.fair_queue("")]
        )
        waiting, due_now, expired, live, later, next_in, turns = (float(as_text(v)) for v in raw)
        return ScheduleCounts(
            int(waiting), int(due_now), int(expired), int(live), int(later), next_in if next_in >= 0 else None, int(turns)
        )

    @contextlib.contextmanager
    def waiting_for_permit(self, holder: str, seconds: float) -> Iterator[None]:
        """This turn waits up to `seconds` for a permit: it counts as covering a lane meanwhile (so the
        reconciler does not send another), and no longer than that if its worker dies."""
        self.connection.zadd(keys.TURNS_WAITING, {holder: self.clock() + seconds + 1.0})
        try:
            yield
        finally:
            self.connection.zrem(keys.TURNS_WAITING, holder)

    def depth(self) -> dict[str, int]:
        """Waiting commands per user, for metrics and the batch ETA."""
        users = [as_text(u) for u in self.connection.lrange(keys.FAIR_USERS, 0, -1)]
        pipe = self.connection.pipeline(transaction=False)
        for user in users:
            pipe.llen(keys.fair_queue(user))
        return dict(zip(users, pipe.execute()))

    def oldest_waiting_since(self) -> float | None:
        """When the oldest command at the head of a user's line was created (None: nothing waits)."""
        created = [at for at in self.oldest_waiting_by_user().values() if at is not None]
        return min(created) if created else None

    def oldest_waiting_by_user(self) -> dict[str, float | None]:
        """Per user with a line: when the command at its head was created (None: the line emptied
        meanwhile, or the record is gone)."""
        users = [as_text(u) for u in self.connection.lrange(keys.FAIR_USERS, 0, -1)]
        pipe = self.connection.pipeline(transaction=False)
        for user in users:
            pipe.lindex(keys.fair_queue(user), 0)
        heads = [(user, as_text(head)) for user, head in zip(users, pipe.execute()) if head is not None]
        for _, head in heads:
            pipe.hget(keys.command(head), "created_at")
        created = pipe.execute() if heads else []
        oldest: dict[str, float | None] = dict.fromkeys(users)
        for (user, _), value in zip(heads, created):
            oldest[user] = float(value) if value is not None else None
        return oldest

    def due_at(self, command_id: str) -> float | None:
        score = self.connection.zscore(keys.DUE, command_id)
        return float(score) if score is not None else None
