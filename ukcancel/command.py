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
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from ukcancel import keys
from ukcancel.events import EventListener
from ukcancel.store import as_text, as_text_dict

QUEUED, RUNNING, RETRYING, COMPLETED, ABORTED = "queued", "running", "retrying", "completed", "aborted"
STATES = (QUEUED, RUNNING, RETRYING, COMPLETED, ABORTED)
TERMINAL = frozenset({COMPLETED, ABORTED})
ACTIVE = frozenset({QUEUED, RUNNING, RETRYING})

Clock = Callable[[], float]

# How often (per index, per process) an insert also trims index entries older than the TTL, and
# how many indexes a process remembers having trimmed.
PRUNE_INTERVAL_SECONDS = 60.0
PRUNE_MEMORY = 10_000

# History in the record: one entry per state change, "<code><microseconds since created_at>",
# comma-separated, e.g. "q0,r1502,c48211" (queued, running 1.5 ms later, completed 48 ms after
# creation). About 20 bytes where JSON took 130, so a typical record keeps every value under
# Redis's `hash-max-listpack-value` (64) and stays a compact listpack. Times are kept to the
# microsecond (the registry's clock is rounded to it), so the offsets restore them exactly.
HISTORY_CODES = {QUEUED: "q", RUNNING: "r", RETRYING: "t", COMPLETED: "c", ABORTED: "a"}
_HISTORY_STATES = {code: state for state, code in HISTORY_CODES.items()}


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
    """`history` from its compact form."""
    if not raw:
        return []
    origin = _micros(created_at)
    out = []
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



# KEYS[1] command hash
# ARGV[1] target state   ARGV[2] comma-separated states it may move from   ARGV[3] now (epoch s, to the microsecond)
# ARGV[4] 1 to count an attempt   ARGV[5] events channel   ARGV[6] TTL seconds when terminal
# ARGV[7..] field/value pairs to write with the transition
# Publishes the new state on ARGV[5], and on the batch's channel (`keys.batch_events`) when the
# command becomes terminal and belongs to a batch.
# Returns {1, state} when moved, {0, current state} when refused, {-1, ""} when there is no record.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
-- Terminal is final whatever the caller allows: no duplicate delivery or race reopens it.
if current == 'completed' or current == 'aborted' then return {0, current} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == current then allowed = true end
end
if not allowed then return {0, current} end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[3])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
-- "<code><microseconds since created_at>", as `encode_history` writes it
local codes = {queued = 'q', running = 'r', retrying = 't', completed = 'c', aborted = 'a'}
local now = tonumber(ARGV[3])
local created = tonumber(redis.call('HGET', KEYS[1], 'created_at')) or now
local offset = math.floor(now * 1000000 + 0.5) - math.floor(created * 1000000 + 0.5)
local entry = (codes[ARGV[1]] or ARGV[1]) .. string.format('%d', offset)
local history = redis.call('HGET', KEYS[1], 'history')
if (not history) or history == '' then history = entry else history = history .. ',' .. entry end
redis.call('HSET', KEYS[1], 'history', history)
if ARGV[1] == 'completed' or ARGV[1] == 'aborted' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
  local batch = redis.call('HGET', KEYS[1], 'batch_id')
  if batch then redis.call('PUBLISH', 'ukcancel:events:batch:' .. batch, ARGV[1]) end
end
redis.call('PUBLISH', ARGV[5], ARGV[1])
return {1, ARGV[1]}
"""

# KEYS[1] command hash
# ARGV[1] 1 to count an attempt   ARGV[2..] field/value pairs
# Writes progress fields only while the command is not terminal; returns 1 if written.
_PROGRESS = """
local current = redis.call('HGET', KEYS[1], 'state')
if (not current) or current == 'completed' or current == 'aborted' then return 0 end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


# KEYS[1] command hash   ARGV[1] callback outcome (JSON)
# Writes the field only while the record exists, so an expired command is not revived as a stub.
_CALLBACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'callback', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Transition:
    moved: bool
    state: str | None  # None: no such command


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
        now = self.now()
        command.created_at = command.updated_at = now
        command.history = [{"state": QUEUED, "at": now}]
        pipe = pipeline if pipeline is not None else self.connection.pipeline(transaction=True)
        key = keys.command(command.id)
        pipe.hset(key, mapping=command.to_hash())
        pipe.expire(key, self.ttl_seconds)
        index = keys.user_commands(command.user_id)
        pipe.zadd(index, {command.id: now})
        pipe.expire(index, self.ttl_seconds)
        pipe.zadd(keys.ALL_COMMANDS, {command.id: now})
        for listing in (index, keys.ALL_COMMANDS):
            if self._due_for_pruning(listing):
                pipe.zremrangebyscore(listing, "-inf", now - self.ttl_seconds)
        if pipeline is None:
            pipe.execute()
        return command

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

    def transition(
        self,
        command_id: str,
        to_state: str,
        allowed_from: Iterable[str],
        *,
        count_attempt: bool = False,
        fields: dict[str, Any] | None = None,
    ) -> Transition:
        """Move a command to `to_state` if it is in one of `allowed_from`; atomic."""
        args: list[Any] = [
            to_state,
            ",".join(allowed_from),
            repr(self.now()),
            "1" if count_attempt else "0",
            keys.command_events(command_id),
            self.ttl_seconds,
        ]
        for name, value in (fields or {}).items():
            args.extend([name, _encode_field(value)])
        moved, state = self._transition(keys=[keys.command(command_id)], args=args)
        if moved == -1:
            return Transition(False, None)
        return Transition(moved == 1, as_text(state))

    def start_attempt(self, command_id: str) -> Transition:
        """queued/retrying (or running, taken over after a crash) -> running, counting an attempt."""
        return self.transition(
            command_id, RUNNING, (QUEUED, RETRYING, RUNNING), count_attempt=True, fields={"next_attempt_at": None}
        )

    def mark_retrying(self, command_id: str, error: str, next_attempt_at: float | None = None) -> Transition:
        """running -> retrying, due again at `next_attempt_at` (epoch seconds)."""
        return self.transition(
            command_id, RETRYING, (RUNNING,), fields={"last_error": error, "next_attempt_at": next_attempt_at}
        )

    def complete(
        self, command_id: str, result: list[Any], *, server_ok: int | None = None, error: str | None = None
    ) -> Transition:
        """Store the final tuple; a command that is already terminal keeps its first result.

        The per-product progress (`settled`) is dropped with it: nothing resumes a completed
        command, and the tuple holds those outcomes.
        """
        fields: dict[str, Any] = {"result": result, "settled": None, "next_attempt_at": None}
        if server_ok is not None:
            fields["server_ok"] = server_ok
        if error is not None:
            fields["last_error"] = error
        return self.transition(command_id, COMPLETED, (QUEUED, RUNNING, RETRYING), fields=fields)

    def withdraw(self, command_id: str) -> Transition:
        """queued -> aborted; refused once a worker has started it."""
        return self.transition(command_id, ABORTED, (QUEUED,), fields={"last_error": "withdrawn by the client"})

    def record_callback(self, command_id: str, outcome: dict[str, Any]) -> bool:
        """Store the callback's delivery outcome; unlike progress, written after the command ended."""
        return bool(self._callback(keys=[keys.command(command_id)], args=[_encode_field(outcome)]))

    def record_progress(self, command_id: str, *, count_attempt: bool = False, **fields: Any) -> bool:
        """Write worker progress fields (and count an attempt) unless the command is terminal."""
        args: list[Any] = ["1" if count_attempt else "0"]
        for name, value in fields.items():
            args.extend([name, _encode_field(value)])
        return bool(self._progress(keys=[keys.command(command_id)], args=args))

    # -- reading ------------------------------------------------------------------------------
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
