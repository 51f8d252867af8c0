"""A cancel command and its record in Redis, the service's source of truth.

States move forward only::

    queued ──> running <──> retrying
      │           │            │
      │           └──> completed <┘
      └──> aborted (withdrawn)     (queued may also complete: retry budget spent before a call)

`completed` and `aborted` are terminal: no later transition, duplicate delivery or race changes
them. Every transition is one Lua script, so a check and its write cannot interleave.
"""

from __future__ import annotations

import json
import string
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from ukcancel import keys
from ukcancel.events import EventListener
from ukcancel.store import as_text, as_text_dict


class CommandState(StrEnum):
    """A command's state, as its record stores it and the API shows it (the values never change).

    Not a batch's state (`ukcancel.batch.BatchState`): a batch is running while any item is."""

    QUEUED = "queued"
    RUNNING = "running"  # a run holds its lease (a UKSSDC call may be under way)
    RETRYING = "retrying"
    COMPLETED = "completed"
    ABORTED = "aborted"


QUEUED, RETRYING, COMPLETED, ABORTED = (
    CommandState.QUEUED, CommandState.RETRYING, CommandState.COMPLETED, CommandState.ABORTED
)
STATES = tuple(state.value for state in CommandState)
TERMINAL = frozenset({COMPLETED, ABORTED})
ACTIVE = frozenset({QUEUED, CommandState.RUNNING, RETRYING})
ACTIVE_IN_ORDER = (QUEUED, CommandState.RUNNING, RETRYING)  # in order, for a transition's allowed states

Clock = Callable[[], float]
RESULTS_MAXLEN = 100_000  # ~ entries kept in ``ukcancel:results``
WITHDRAWAL_FIELDS = {"last_error": "withdrawn by the client"}  # what a withdrawal writes

# How often (per index, per process) an insert also trims index entries older than the TTL, and
# how many indexes a process remembers having trimmed.
PRUNE_INTERVAL_SECONDS = 60.0
PRUNE_MEMORY = 10_000

# History in the record: one entry per state change, "<code><microseconds since created_at>",
# comma-separated, e.g. "q0,r1502,c48211" (queued, running 1.5 ms later, completed 48 ms after
# creation). About 20 bytes where JSON took 130, so a typical record keeps every value under
# Redis's `hash-max-listpack-value` (64) and stays a compact listpack. Times are kept to the
# microsecond (the registry's clock is rounded to it), so the offsets restore them exactly.
HISTORY_CODES = {QUEUED: "q", CommandState.RUNNING: "r", RETRYING: "t", COMPLETED: "c", ABORTED: "a"}
_HISTORY_STATES = {code: state for state, code in HISTORY_CODES.items()}



def with_constants(script: str) -> str:
    """`script` (Lua) with the Python constants it names filled in, so no state name, history code
    or channel prefix is written twice: ``$QUEUED``, ``$COMPLETED`` and ``$ABORTED`` (quoted state
    names), ``$HISTORY_CODES`` (a Lua table of `HISTORY_CODES`), ``$COMMAND_EVENTS`` and
    ``$BATCH_EVENTS`` (the quoted prefixes of a command's and a batch's pub/sub channel)."""
    codes = ", ".join(f"{state} = '{code}'" for state, code in HISTORY_CODES.items())
    return string.Template(script).substitute(
        QUEUED=f"'{QUEUED}'", COMPLETED=f"'{COMPLETED}'", ABORTED=f"'{ABORTED}'",
        HISTORY_CODES="{" + codes + "}",
        COMMAND_EVENTS=f"'{keys.command_events('')}'", BATCH_EVENTS=f"'{keys.batch_events('')}'",
    )


def new_command_id() -> str:
    return uuid.uuid4().hex


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def encode_history(history: list[dict[str, Any]], created_at: float) -> str:
    """The record's compact form of `history` (see HISTORY_CODES)."""
    origin = _micros(created_at)
    return ",".join(
        f"{HISTORY_CODES.get(entry['state'], entry['state'])}{_micros(entry['at']) - origin}" for entry in history
    )


def decode_history(raw: str, created_at: float) -> list[dict[str, Any]]:
    """`history` from its compact form.

    Records written before the compact form hold a JSON list of {"state", "at"}; a transition since
    appended compact entries after it ("[...],r1502"), so both parts are read.
    """
    if not raw:
        return []
    out: list[dict[str, Any]] = []
    if raw.startswith("["):
        end = raw.rfind("]") + 1
        out = [{"state": str(entry["state"]), "at": float(entry["at"])} for entry in json.loads(raw[:end])]
        raw = raw[end:].lstrip(",")
        if not raw:
            return out
    origin = _micros(created_at)
    for entry in raw.split(","):
        cut = len(entry.rstrip("-0123456789"))
        code, offset = entry[:cut], entry[cut:]
        out.append({"state": _HISTORY_STATES.get(code, code), "at": (origin + int(offset)) / 1_000_000})
    return out


@dataclass
class CancelCommand:
    """One request to cancel products of one UKSSDC job on behalf of one UKSSDC user."""

    job_id: int
    user_id: str
    products: list[str] | str  # long names, or "all"
    id: str = field(default_factory=new_command_id)
    state: str = QUEUED
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None  # epoch seconds, while the command is due again later
    created_at: float = 0.0
    updated_at: float = 0.0
    result: list[Any] | None = None
    server_ok: int | None = None
    submitted_by: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    batch_id: str | None = None
    callback_url: str | None = None
    callback: dict[str, Any] | None = None
    # Worker progress, kept on the record so a retry or a redelivery carries on where it stopped.
    resolved: list[str] | None = None  # short names "all" resolved to
    settled: dict[str, dict[str, Any]] = field(default_factory=dict)  # short -> {"code", "text"}; dropped on completion
    ambiguous: bool = False  # an earlier attempt may have reached the server
    unlisted: bool = False  # "all" on a job listOldJobs did not list: drop code-2 entries

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    # -- Redis hash encoding ---------------------------------------------------------------
    # The id is not stored in the hash: it is the key's own suffix (`keys.command(id)`).
    _JSON_FIELDS = ("products", "result", "callback", "resolved", "settled")

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.__dict__.items():
            if value is None or name == "id":
                continue
            if name == "history":
                out[name] = encode_history(value, self.created_at)
            elif name in self._JSON_FIELDS:
                out[name] = json.dumps(value, separators=(",", ":"))
            elif isinstance(value, bool):
                out[name] = "1" if value else "0"
            else:
                out[name] = str(value)
        if not self.settled:
            out.pop("settled", None)
        if not self.ambiguous:
            out.pop("ambiguous", None)
        if not self.unlisted:
            out.pop("unlisted", None)
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes | str, bytes | str], command_id: str) -> CancelCommand:
        """The command in the hash `raw` read from `keys.command(command_id)`."""
        data = as_text_dict(raw)
        created_at = float(data["created_at"])

        def loads(name: str, default: Any = None) -> Any:
            return json.loads(data[name]) if data.get(name) else default

        def opt_int(name: str) -> int | None:
            return int(data[name]) if data.get(name) not in (None, "") else None

        return cls(
            id=command_id,
            job_id=int(data["job_id"]),
            user_id=data["user_id"],
            products=loads("products"),
            state=data["state"],
            attempts=int(data.get("attempts") or 0),
            last_error=data.get("last_error") or None,
            next_attempt_at=float(data["next_attempt_at"]) if data.get("next_attempt_at") else None,
            created_at=created_at,
            updated_at=float(data["updated_at"]),
            result=loads("result"),
            server_ok=opt_int("server_ok"),
            submitted_by=data.get("submitted_by") or None,
            history=decode_history(data.get("history", ""), created_at),
            batch_id=data.get("batch_id") or None,
            callback_url=data.get("callback_url") or None,
            callback=loads("callback"),
            resolved=loads("resolved"),
            settled=loads("settled", {}),
            ambiguous=data.get("ambiguous") == "1",
            unlisted=data.get("unlisted") == "1",
        )



# The one transition every script that moves a command runs (`_TRANSITION` here, the lease-checked
# steps of `ukcancel.schedule`, a batch's withdrawal in `ukcancel.batch`): a Lua function prepended to
# those scripts, so a check, its write and what a terminal state must bring with it happen in one
# atomic step.
#   key: the command hash   results: the results stream   outbox: the callback outbox
#   a: {command id, target state, comma-separated states it may move from, now (epoch s, to the
#       microsecond), 1 to count an attempt, TTL seconds when terminal, MAXLEN (~) of the results
#       stream, field/value pairs to write ('' deletes)...} (see `CommandRegistry.transition_args`)
# Publishes the new state on the command's channel, and on the batch's channel when the command
# becomes terminal and belongs to a batch. Becoming terminal also appends the command's one
# results-stream entry and, when it has a callback URL, marks the callback pending and puts it in
# the outbox (the outbox, not a hook after the script, so no crash in between can lose either).
# Returns {1, state} when moved, {0, current state} when refused, {-1, ""} when there is no record.
TRANSITION_LUA = with_constants("""
local batch_news = true  -- a script moving many items of one batch tells the batch once itself
local function transition(key, results, outbox, a)
  local id, target, now = a[1], a[2], a[4]
  local current = redis.call('HGET', key, 'state')
  if not current then return {-1, ''} end
  -- Terminal is final whatever the caller allows: no duplicate delivery or race reopens it.
  if current == $COMPLETED or current == $ABORTED then return {0, current} end
  local allowed = false
  for s in string.gmatch(a[3], '[^,]+') do
    if s == current then allowed = true end
  end
  if not allowed then return {0, current} end
  redis.call('HSET', key, 'state', target, 'updated_at', now)
  if a[5] == '1' then redis.call('HINCRBY', key, 'attempts', 1) end
  for i = 8, #a, 2 do
    if a[i + 1] == '' then redis.call('HDEL', key, a[i])
    else redis.call('HSET', key, a[i], a[i + 1]) end
  end
  -- "<code><microseconds since created_at>", as `encode_history` writes it
  local codes = $HISTORY_CODES
  local at = tonumber(now)
  local created = tonumber(redis.call('HGET', key, 'created_at')) or at
  local offset = math.floor(at * 1000000 + 0.5) - math.floor(created * 1000000 + 0.5)
  local entry = (codes[target] or target) .. string.format('%d', offset)
  local history = redis.call('HGET', key, 'history')
  if (not history) or history == '' then history = entry else history = history .. ',' .. entry end
  redis.call('HSET', key, 'history', history)
  if target == $COMPLETED or target == $ABORTED then
    redis.call('EXPIRE', key, tonumber(a[6]))
    local f = redis.call('HMGET', key, 'user_id', 'job_id', 'result', 'last_error', 'callback_url', 'batch_id')
    local fields = {'command_id', id, 'user_id', f[1], 'job_id', f[2], 'state', target, 'result', f[3] or 'null'}
    if f[4] then table.insert(fields, 'error'); table.insert(fields, f[4]) end
    redis.call('XADD', results, 'MAXLEN', '~', a[7], '*', unpack(fields))
    if f[5] then
      redis.call('HSET', key, 'callback',
        '{"status":"pending","attempts":0,"http_status":null,"error":null,"at":' .. now .. '}')
      redis.call('ZADD', outbox, now, id)
    end
    if f[6] and batch_news then redis.call('PUBLISH', $BATCH_EVENTS .. f[6], target) end
  end
  redis.call('PUBLISH', $COMMAND_EVENTS .. id, target)
  return {1, target}
end
""")

# KEYS[1] command hash   KEYS[2] results stream   KEYS[3] callback outbox
# ARGV: the arguments of `transition` (see TRANSITION_LUA).
_TRANSITION = TRANSITION_LUA + "return transition(KEYS[1], KEYS[2], KEYS[3], ARGV)"

# KEYS[1] command hash   KEYS[2] lease holders
# ARGV[1] command id   ARGV[2] holder ('' for none: the caller holds no lease)   ARGV[3] 1 to count an
# attempt   ARGV[4..] field/value pairs
# Writes progress fields only while the command is not terminal and, when a holder is named, only
# while that holder has the command's lease (a run whose lease was taken over writes nothing).
# Returns 1 if written.
_PROGRESS = with_constants("""
local current = redis.call('HGET', KEYS[1], 'state')
if (not current) or current == $COMPLETED or current == $ABORTED then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
""")


# KEYS[1] command hash   KEYS[2] callback outbox
# ARGV[1] command id   ARGV[2] callback outcome (JSON)   ARGV[3] when to try again (epoch s), or ''
# when the callback is settled (delivered, refused, failed for good)
# Writes the outcome only while the record exists (an expired command is not revived as a stub)
# and, in the same step, keeps the callback in the outbox until then, or takes it out.
_CALLBACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'callback', ARGV[2])
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) end
return 1
"""


def completion_fields(result: list[Any], server_ok: int | None = None, error: str | None = None) -> dict[str, Any]:
    """What completing a command writes: the tuple, the server's own OK and the last error if any.

    The per-product progress (`settled`) is dropped with it: nothing resumes a completed command,
    and the tuple holds those outcomes.
    """
    fields: dict[str, Any] = {"result": result, "settled": None, "next_attempt_at": None}
    if server_ok is not None:
        fields["server_ok"] = server_ok
    if error is not None:
        fields["last_error"] = error
    return fields


@dataclass(frozen=True)
class Transition:
    moved: bool
    state: str | None  # None: no such command (or, with `held` false, not known)
    held: bool = True  # False: a lease-checked step found its lease taken over, and did nothing

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Transition:
        """From a `TRANSITION_LUA` reply: {1, state} moved, {0, state} refused, {-1, ""} no record."""
        moved, state = reply
        if moved == -1:
            return cls(False, None)
        return cls(moved == 1, as_text(state))


class CommandRegistry:
    """Stores cancel commands and moves them between states.

    Redis keys owned: ``ukcancel:cmd:{id}``, ``ukcancel:user:{user_id}:cmds``, ``ukcancel:cmds``
    and the pub/sub channel ``ukcancel:events:{id}`` (see `ukcancel.keys`).
    """

    def __init__(
        self, connection: redis.Redis, ttl_seconds: int, clock: Clock = time.time, events: EventListener | None = None
    ) -> None:
        self.connection = connection
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.events = events if events is not None else EventListener(connection)
        self._transition = connection.register_script(_TRANSITION)
        self._progress = connection.register_script(_PROGRESS)
        self._callback = connection.register_script(_CALLBACK)
        # index key -> when this process last pruned it (monotonic seconds); see `_due_for_pruning`
        self._pruned: dict[str, float] = {}
        self._pruned_lock = threading.Lock()

    def now(self) -> float:
        """The clock, to the microsecond: the resolution of the times a record holds."""
        return round(self.clock(), 6)

    # -- writing ------------------------------------------------------------------------------
    def add(self, command: CancelCommand, pipeline: redis.client.Pipeline | None = None) -> CancelCommand:
        """Write a new queued command (into `pipeline` when given, so batches go in one round trip)."""
        pipe = pipeline if pipeline is not None else self.connection.pipeline(transaction=True)
        self.add_many([command], pipe)
        if pipeline is None:
            pipe.execute()
        return command

    def add_many(self, commands: Sequence[CancelCommand], pipeline: redis.client.Pipeline) -> None:
        """Write new queued commands into `pipeline`: a hash each, and each listing index once for
        them all (a 10,000-item batch adds to its user's index with one ZADD, not 10,000)."""
        now = self.now()
        by_index: dict[str, dict[str, float]] = defaultdict(dict)
        for command in commands:
            command.created_at = command.updated_at = now
            command.history = [{"state": QUEUED, "at": now}]
            key = keys.command(command.id)
            pipeline.hset(key, mapping=command.to_hash())
            pipeline.expire(key, self.ttl_seconds)
            by_index[keys.user_commands(command.user_id)][command.id] = now
        for index, members in by_index.items():
            pipeline.zadd(index, members)
            pipeline.expire(index, self.ttl_seconds)
        if commands:
            pipeline.zadd(keys.ALL_COMMANDS, {command.id: now for command in commands})
        for listing in (*by_index, keys.ALL_COMMANDS):
            if self._due_for_pruning(listing):
                pipeline.zremrangebyscore(listing, "-inf", now - self.ttl_seconds)

    def _due_for_pruning(self, index: str) -> bool:
        """Whether this insert should also drop the index's entries older than the TTL.

        Once per `PRUNE_INTERVAL_SECONDS` per index and process, not on every insert: an entry
        whose record has expired is skipped by the listing anyway, and a sorted set is cheaper to
        trim once a minute than on every one of thousands of inserts a second.
        """
        now = time.monotonic()
        with self._pruned_lock:
            last = self._pruned.get(index)
            if last is not None and now - last < PRUNE_INTERVAL_SECONDS:
                return False
            if len(self._pruned) >= PRUNE_MEMORY:
                self._pruned.clear()  # bounded: forgetting only means an early prune
            self._pruned[index] = now
            return True

    def transition_keys(self, command_id: str) -> list[str]:
        """The KEYS of `TRANSITION_LUA` for this command: its hash, the results stream, the outbox."""
        return [keys.command(command_id), keys.RESULTS_STREAM, keys.CALLBACK_OUTBOX]

    def transition_args(
        self,
        command_id: str,
        to_state: str,
        allowed_from: Iterable[str],
        *,
        count_attempt: bool = False,
        fields: dict[str, Any] | None = None,
    ) -> list[Any]:
        """The arguments of `TRANSITION_LUA` (see there), for this registry's clock and TTL."""
        pairs: list[Any] = []
        for name, value in (fields or {}).items():
            pairs.extend([name, _encode_field(value)])
        return [
            command_id,
            to_state,
            ",".join(allowed_from),
            repr(self.now()),
            "1" if count_attempt else "0",
            self.ttl_seconds,
            RESULTS_MAXLEN,
            *pairs,
        ]

    def transition(
        self,
        command_id: str,
        to_state: str,
        allowed_from: Iterable[str],
        *,
        count_attempt: bool = False,
        fields: dict[str, Any] | None = None,
    ) -> Transition:
        """Move a command to `to_state` if it is in one of `allowed_from`; atomic (see TRANSITION_LUA)."""
        reply = self._transition(
            keys=self.transition_keys(command_id),
            args=self.transition_args(command_id, to_state, allowed_from, count_attempt=count_attempt, fields=fields),
        )
        return Transition.from_reply(reply)

    def start_attempt(self, command_id: str) -> Transition:
        """queued/retrying (or running, taken over after a crash) -> running.

        No attempt is counted here: an attempt is a run that sent the UKSSDC a request, counted
        when it sends its first (`record_progress(count_attempt=True)`), so work the fleet could
        not serve uses up none of the command's budget.
        """
        running = CommandState.RUNNING
        return self.transition(command_id, running, (QUEUED, RETRYING, running), fields={"next_attempt_at": None})

    def mark_retrying(self, command_id: str, error: str, next_attempt_at: float | None = None) -> Transition:
        """running -> retrying, due again at `next_attempt_at` (epoch seconds)."""
        return self.transition(
            command_id, RETRYING, (CommandState.RUNNING,), fields={"last_error": error, "next_attempt_at": next_attempt_at}
        )

    def complete(
        self, command_id: str, result: list[Any], *, server_ok: int | None = None, error: str | None = None
    ) -> Transition:
        """Store the final tuple; a command that is already terminal keeps its first result.

        Workers complete through `ukcancel.schedule.Schedule.finish`, which also checks the lease.
        """
        return self.transition(command_id, COMPLETED, ACTIVE_IN_ORDER, fields=completion_fields(result, server_ok, error))

    def withdraw(self, command_id: str) -> Transition:
        """queued -> aborted; refused once a worker has started it."""
        return self.transition(command_id, ABORTED, (QUEUED,), fields=WITHDRAWAL_FIELDS)

    def record_callback(self, command_id: str, outcome: dict[str, Any], retry_at: float | None = None) -> bool:
        """Store the callback's delivery outcome (written after the command ended); with `retry_at`
        the callback stays in the outbox, due again then, else it leaves the outbox."""
        args = [command_id, _encode_field(outcome), "" if retry_at is None else repr(retry_at)]
        return bool(self._callback(keys=[keys.command(command_id), keys.CALLBACK_OUTBOX], args=args))

    def record_progress(
        self, command_id: str, *, holder: str | None = None, count_attempt: bool = False, **fields: Any
    ) -> bool:
        """Write worker progress fields (and count an attempt) unless the command is terminal or,
        when `holder` is given, that run no longer holds the command's lease."""
        args: list[Any] = [command_id, holder or "", "1" if count_attempt else "0"]
        for name, value in fields.items():
            args.extend([name, _encode_field(value)])
        return bool(self._progress(keys=[keys.command(command_id), keys.LEASE_HOLDERS], args=args))

    # -- reading ------------------------------------------------------------------------------
    def callback_url(self, command_id: str) -> str | None:
        """The command's callback URL (None: no callback, or no such command), without reading the rest."""
        url = self.connection.hget(keys.command(command_id), "callback_url")
        return as_text(url) if url else None

    def get(self, command_id: str) -> CancelCommand | None:
        raw = self.connection.hgetall(keys.command(command_id))
        return CancelCommand.from_hash(raw, command_id) if raw else None

    def state_of(self, command_id: str) -> str | None:
        """The command's state alone (one HGET); None when there is no such command."""
        state = self.connection.hget(keys.command(command_id), "state")
        return as_text(state) if state is not None else None

    def get_many(self, command_ids: list[str]) -> list[CancelCommand | None]:
        pipe = self.connection.pipeline(transaction=False)
        for command_id in command_ids:
            pipe.hgetall(keys.command(command_id))
        return [
            CancelCommand.from_hash(raw, command_id) if raw else None
            for command_id, raw in zip(command_ids, pipe.execute())
        ]

    def wait_terminal(self, command_id: str, timeout: float) -> CancelCommand | None:
        """The command once it is terminal, or as it stands after `timeout` seconds.

        Watches its channel (the process's one `EventListener`) before reading, so a transition
        between the read and the wait is not missed; reads the record again only on news.
        """
        with self.events.watching(keys.command_events(command_id)) as waiter:
            command = self.get(command_id)
            deadline = time.monotonic() + timeout
            while command is not None and not command.terminal:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or waiter.wait(remaining) is None:
                    break
                command = self.get(command_id)
            return command


def _encode_field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
