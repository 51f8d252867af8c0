"""Batches: many cancel commands accepted in one request, followed as one thing.

A batch is a list of ordinary cancel commands (each carries the batch's id), so the workers,
the fair queue and the records need nothing special for it. What the batch adds is its order
(item index -> command id), its owner, and its own state:

    expanding ──> running ──> (completed: derived, once every item is terminal)
        └──> failed (the active jobs could not be listed)

`expanding` exists only for ``all_active`` batches, whose items are found by a worker asking
the UKSSDC which of the user's products are still active. An item's record expires on its own
schedule; the batch keys expire `result_ttl_seconds` after creation.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from ukcancel import keys
from ukcancel.command import (
    ABORTED,
    COMPLETED,
    QUEUED,
    STATES,
    TERMINAL,
    TRANSITION_LUA,
    WITHDRAWAL_FIELDS,
    CancelCommand,
    CommandRegistry,
    with_constants,
)
from ukcancel.events import EventListener
from ukcancel.outcome import result_status, withdrawn_tuple
from ukcancel.store import as_text, as_text_dict


class BatchState(StrEnum):
    """A batch's state, as its record stores it and the API shows it (the values never change).

    Not a command's state (`ukcancel.command.CommandState`): a batch is running while any of its
    items is not terminal, whatever state each item is in."""

    EXPANDING = "expanding"  # an `all_active` batch whose items a worker is still finding
    RUNNING = "running"
    COMPLETED = "completed"  # reported, never stored: every item is terminal
    FAILED = "failed"  # the expansion failed


EXPANDING = BatchState.EXPANDING
BATCH_STATES = tuple(state.value for state in BatchState)
RESULT_STATUSES = ("-1", "0", "1", "2")
# Published on the batch's channel when an expansion ends (items publish their terminal state).
EXPANDED = "expanded"
# Ids per RPUSH, so one command never carries 10,000 arguments.
ITEM_CHUNK = 1000

Clock = Callable[[], float]

# KEYS[1] the batch's item list (`keys.batch_items`)   KEYS[2] the batch user's waiting line (`keys.fair_queue`)
# KEYS[3] the results stream   KEYS[4] the callback outbox
# ARGV[1] key prefix of a command record (`keys.command("")`)   ARGV[2] the batch's channel
# ARGV[3..] the arguments of `transition` (`ukcancel.command.TRANSITION_LUA`) for a withdrawal, the
# command id left empty
# Every item still queued moves queued -> aborted through the one transition every command takes
# (its results entry, its callback in the outbox and its own channel included); the batch's channel
# hears one "aborted" for them all, not 10,000; items in any other state are left alone. Then one
# pass rebuilds the user's line without them (an LREM per item would be O(items x line)). Command
# records are derived from ARGV[1] (a single Redis node, not a cluster).
# Returns the ids it aborted.
_WITHDRAW_QUEUED = TRANSITION_LUA + with_constants("""
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local args = {unpack(ARGV, 3)}
batch_news = false  -- the batch hears once, below, not once per item
local aborted, gone = {}, {}
for _, id in ipairs(ids) do
  args[1] = id
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'state') == $QUEUED and transition(key, KEYS[3], KEYS[4], args)[1] == 1 then
    aborted[#aborted + 1] = id
    gone[id] = true
  end
end
if #aborted > 0 then
  redis.call('PUBLISH', ARGV[2], $ABORTED)
  local line = redis.call('LRANGE', KEYS[2], 0, -1)
  local kept = {}
  for _, id in ipairs(line) do
    if not gone[id] then kept[#kept + 1] = id end
  end
  if #kept < #line then
    redis.call('DEL', KEYS[2])
    for i = 1, #kept, 1000 do
      redis.call('RPUSH', KEYS[2], unpack(kept, i, math.min(i + 999, #kept)))
    end
  end
end
return aborted
""")


def new_batch_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Batch:
    """A batch's own record (its items are `BatchItem`s, read separately)."""

    user_id: str
    submitted_by: str | None = None
    state: str = BatchState.RUNNING
    total: int = 0
    id: str = field(default_factory=new_batch_id)
    created_at: float = 0.0
    error: str | None = None

    def to_hash(self) -> dict[str, str]:
        out = {
            "id": self.id,
            "user_id": self.user_id,
            "state": self.state,
            "total": str(self.total),
            "created_at": repr(self.created_at),
        }
        if self.submitted_by:
            out["submitted_by"] = self.submitted_by
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes | str, bytes | str]) -> Batch:
        data = as_text_dict(raw)
        return cls(
            id=data["id"],
            user_id=data["user_id"],
            submitted_by=data.get("submitted_by") or None,
            state=data["state"],
            total=int(data.get("total") or 0),
            created_at=float(data.get("created_at") or 0),
            error=data.get("error") or None,
        )


@dataclass(frozen=True)
class BatchItem:
    """One line of a batch: its place, its command and how that command stands."""

    index: int
    command_id: str
    job_id: int | None
    products: list[str] | str | None
    state: str | None  # None: the command's record has expired
    result: list[Any] | None  # the cancelProducts() tuple once terminal (withdrawn: -1)


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch's items stand, counted over all of them."""

    counts: dict[str, int]  # command state -> items
    results: dict[str, int]  # tuple status -> terminal items
    outstanding: int  # items not yet terminal
    outstanding_calls: int  # UKSSDC calls those still need, at least ("all" also lists the jobs)

    @property
    def terminal(self) -> int:
        return sum(n for state, n in self.counts.items() if state in TERMINAL)


class BatchRegistry:
    """Stores batches and reads their progress.

    Redis keys owned: ``ukcancel:batch:{id}``, ``ukcancel:batch:{id}:items``,
    ``ukcancel:user:{user_id}:batches``, ``ukcancel:batches:expanding`` and the pub/sub channel
    ``ukcancel:events:batch:{id}`` (see `ukcancel.keys`). Items publish their terminal state on
    that channel themselves (the command transition script does); an expansion publishes
    `EXPANDED` when it ends.

    An expanding batch has a deadline by which its expansion should be heard from again (each
    step moves it on); a batch past it lost its expansion task, and the reconciler sends another.
    """

    def __init__(
        self,
        connection: redis.Redis,
        ttl_seconds: int,
        clock: Clock = time.time,
        expansion_timeout: float = 60.0,
        events: EventListener | None = None,
    ) -> None:
        self.connection = connection
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.expansion_timeout = expansion_timeout
        self.events = events if events is not None else EventListener(connection)
        self._withdraw_queued = connection.register_script(_WITHDRAW_QUEUED)

    # -- writing ------------------------------------------------------------------------------
    def add(self, batch: Batch, commands: Sequence[CancelCommand], pipeline: redis.client.Pipeline) -> Batch:
        """Write a new batch and its item order into `pipeline`, marking each command as its item.

        The caller then hands the same pipeline to `Schedule.stage(commands, pipeline)`, so
        the batch, its commands and their places in line are written in one round trip.
        """
        batch.created_at = self.clock()
        batch.total = len(commands)
        for command in commands:
            command.batch_id = batch.id
        key = keys.batch(batch.id)
        pipeline.hset(key, mapping=batch.to_hash())
        pipeline.expire(key, self.ttl_seconds)
        self._append_items(batch.id, [command.id for command in commands], pipeline)
        index = keys.user_batches(batch.user_id)
        pipeline.zadd(index, {batch.id: batch.created_at})
        pipeline.zremrangebyscore(index, "-inf", batch.created_at - self.ttl_seconds)
        pipeline.expire(index, self.ttl_seconds)
        if batch.state == EXPANDING:
            pipeline.zadd(keys.EXPANDING_BATCHES, {batch.id: batch.created_at + self.expansion_timeout})
        return batch

    def _append_items(self, batch_id: str, command_ids: list[str], pipeline: redis.client.Pipeline) -> None:
        items = keys.batch_items(batch_id)
        for start in range(0, len(command_ids), ITEM_CHUNK):
            pipeline.rpush(items, *command_ids[start : start + ITEM_CHUNK])
        if command_ids:
            pipeline.expire(items, self.ttl_seconds)

    def watch_expanding(self, batch_id: str, pipeline: redis.client.Pipeline) -> bool:
        """Watch the batch's record on `pipeline` and start its transaction if the batch is still
        expanding (True); a finish or any progress by another expansion in between then makes the
        caller's EXEC fail with `WatchError`, so a batch is expanded at most once."""
        pipeline.watch(keys.batch(batch_id))
        if as_text(pipeline.hget(keys.batch(batch_id), "state") or "") != EXPANDING:
            return False
        pipeline.multi()
        return True

    def finish_expansion(self, batch_id: str, commands: Sequence[CancelCommand], pipeline: redis.client.Pipeline) -> None:
        """An expansion found these commands: record them as the items and start running.

        Written into `pipeline` (the caller stages the commands with `Schedule.stage` and
        executes it); announced on the batch channel so long polls waiting for the expansion wake up.
        """
        for command in commands:
            command.batch_id = batch_id
        self._append_items(batch_id, [command.id for command in commands], pipeline)
        pipeline.hset(keys.batch(batch_id), mapping={"state": BatchState.RUNNING, "total": str(len(commands))})
        pipeline.hdel(keys.batch(batch_id), "jobs", "found")
        pipeline.zrem(keys.EXPANDING_BATCHES, batch_id)
        pipeline.publish(keys.batch_events(batch_id), EXPANDED)

    def fail(self, batch_id: str, error: str) -> None:
        """An expansion that cannot finish: the batch fails with no items."""
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(keys.batch(batch_id), mapping={"state": BatchState.FAILED, "error": error})
        pipe.hdel(keys.batch(batch_id), "jobs", "found")
        pipe.zrem(keys.EXPANDING_BATCHES, batch_id)
        pipe.publish(keys.batch_events(batch_id), BatchState.FAILED)
        pipe.execute()

    def withdraw_queued(self, batch_id: str, registry: CommandRegistry) -> list[str]:
        """Withdraw every item of the batch still queued, in one script; the ids it aborted.

        Each moves queued -> aborted by `registry`'s own transition (as `CommandRegistry.withdraw`
        moves one: its results entry and callback come with it) and leaves its user's line; items
        already started or ended are left as they are. 10,000 items take well under a second.
        """
        batch = self.get(batch_id)
        if batch is None:
            return []
        args = registry.transition_args("", ABORTED, (QUEUED,), fields=WITHDRAWAL_FIELDS)
        aborted = self._withdraw_queued(
            keys=[keys.batch_items(batch_id), keys.fair_queue(batch.user_id), keys.RESULTS_STREAM, keys.CALLBACK_OUTBOX],
            args=[keys.command(""), keys.batch_events(batch_id), *args],
        )
        return [as_text(command_id) for command_id in aborted]

    # -- an expansion's progress (kept on the record so a retried task carries on) --------
    def expansion_progress(self, batch_id: str) -> dict[str, Any]:
        """``jobs`` (job id -> short names still to check, or None before listing), ``found``
        (job id -> active long names) and ``attempts`` (failed UKSSDC calls so far)."""
        jobs, found, attempts = self.connection.hmget(keys.batch(batch_id), "jobs", "found", "attempts")
        return {
            "jobs": json.loads(jobs) if jobs else None,
            "found": json.loads(found) if found else {},
            "attempts": int(attempts or 0),
        }

    def save_expansion_progress(self, batch_id: str, **fields: Any) -> None:
        """Write what the expansion learned, and move its deadline on (it is alive)."""
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(
            keys.batch(batch_id),
            mapping={name: value if isinstance(value, (int, str)) else json.dumps(value) for name, value in fields.items()},
        )
        pipe.zadd(keys.EXPANDING_BATCHES, {batch_id: self.clock() + self.expansion_timeout}, xx=True)
        pipe.execute()

    def expect_expansion(self, batch_id: str, within: float) -> None:
        """The expansion will be heard from within `within` seconds (+ the timeout): e.g. rescheduled."""
        self.connection.zadd(
            keys.EXPANDING_BATCHES, {batch_id: self.clock() + within + self.expansion_timeout}, xx=True
        )

    def overdue_expansions(self) -> list[str]:
        """Expanding batches not heard from by their deadline (their expansion task was lost)."""
        return [as_text(b) for b in self.connection.zrangebyscore(keys.EXPANDING_BATCHES, "-inf", repr(self.clock()))]

    # -- reading ------------------------------------------------------------------------------
    def recent_ids(self, user_id: str, count: int = 50) -> list[str]:
        """The ids of `user_id`'s newest batches, newest first, at most `count`."""
        return [as_text(i) for i in self.connection.zrevrange(keys.user_batches(user_id), 0, count - 1)]

    def get(self, batch_id: str) -> Batch | None:
        raw = self.connection.hgetall(keys.batch(batch_id))
        return Batch.from_hash(raw) if raw else None

    def command_ids(self, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
        return [as_text(i) for i in self.connection.lrange(keys.batch_items(batch_id), start, stop)]

    def items(self, batch_id: str, start: int, count: int) -> list[BatchItem]:
        """`count` items from index `start`, as they stand now."""
        ids = self.command_ids(batch_id, start, start + count - 1)
        pipe = self.connection.pipeline(transaction=False)
        for command_id in ids:
            pipe.hmget(keys.command(command_id), "job_id", "products", "state", "result", "last_error")
        items = []
        for offset, (command_id, fields) in enumerate(zip(ids, pipe.execute())):
            job_id, products, state, result, last_error = (as_text(v) if v is not None else None for v in fields)
            items.append(
                BatchItem(
                    index=start + offset,
                    command_id=command_id,
                    job_id=int(job_id) if job_id else None,
                    products=json.loads(products) if products else None,
                    state=state,
                    result=_item_result(state, result, last_error),
                )
            )
        return items

    def progress(self, batch_id: str) -> BatchProgress:
        """Counts over every item: one pipelined read of each item's state and result."""
        ids = self.command_ids(batch_id)
        pipe = self.connection.pipeline(transaction=False)
        for command_id in ids:
            pipe.hmget(keys.command(command_id), "state", "result", "products")
        counts: Counter[str] = Counter()
        results: Counter[str] = Counter()
        outstanding = outstanding_calls = 0
        for state_raw, result, products in pipe.execute():
            state = as_text(state_raw) if state_raw is not None else "expired"
            counts[state] += 1
            if state == COMPLETED:
                results[result_status(result) or "-1"] += 1
            elif state == ABORTED:
                results["-1"] += 1  # a withdrawn command's tuple is (-1, ...)
            elif state != "expired":
                outstanding += 1
                outstanding_calls += 2 if products == b'"all"' or products == '"all"' else 1
        by_state = {state: counts.get(state, 0) for state in STATES}
        if counts["expired"]:
            by_state["expired"] = counts["expired"]
        return BatchProgress(
            counts=by_state,
            results={status: results.get(status, 0) for status in RESULT_STATUSES},
            outstanding=outstanding,
            outstanding_calls=outstanding_calls,
        )

    def state_of(self, batch: Batch, progress: BatchProgress) -> str:
        """The state to report: a running batch whose items are all terminal is completed."""
        if batch.state == BatchState.RUNNING and progress.outstanding == 0:
            return BatchState.COMPLETED
        return batch.state

    def _outstanding(self, batch: Batch | None) -> float:
        """Items still to finish; infinite while expanding, 0 for a failed or vanished batch."""
        if batch is None or batch.state == BatchState.FAILED:
            return 0
        if batch.state == EXPANDING:
            return math.inf
        ids = self.command_ids(batch.id)
        pipe = self.connection.pipeline(transaction=False)
        for command_id in ids:
            pipe.hget(keys.command(command_id), "state")
        return sum(1 for state in pipe.execute() if state is not None and as_text(state) not in TERMINAL)

    def wait_done(self, batch_id: str, timeout: float) -> None:
        """Return once every item is terminal (or the batch failed), or after `timeout` seconds.

        Watches the batch's channel before counting, so no transition is missed, and then counts
        the terminal notices instead of re-reading the items after each one: every command becomes
        terminal exactly once, so after as many notices as there were outstanding items it is time
        to look again. Notices of transitions that happened before the count only make it look
        again early; so does any other notice, or news the listener may have missed.
        """
        with self.events.watching(keys.batch_events(batch_id)) as waiter:
            outstanding = self._outstanding(self.get(batch_id))
            heard = 0
            deadline = time.monotonic() + timeout
            while outstanding:
                remaining = deadline - time.monotonic()
                news = waiter.wait(remaining) if remaining > 0 else None
                if news is None:
                    return
                messages, missed = news
                heard += len(messages)
                if missed or any(message not in TERMINAL for message in messages) or heard >= outstanding:
                    outstanding, heard = self._outstanding(self.get(batch_id)), 0


def estimate_seconds(
    progress: BatchProgress, waiting_by_user: dict[str, int], user_id: str, rate_per_second: float, blocked_for: float
) -> float | None:
    """Seconds until the batch's items are all terminal, at the fleet's current rate; None when done.

    Dispatch is round robin between users, so while this batch has items waiting, every other
    user with waiting commands gets a turn per turn of this batch: up to as many calls as the
    batch still needs. `blocked_for` is what is left of a fleet pause or an open breaker.
    """
    if progress.outstanding == 0:
        return None
    others = sum(min(waiting, progress.outstanding) for user, waiting in waiting_by_user.items() if user != user_id)
    return round(blocked_for + (progress.outstanding_calls + others) / rate_per_second, 1)


def _item_result(state: str | None, result: str | None, last_error: str | None) -> list[Any] | None:
    if state == COMPLETED and result:
        return json.loads(result)
    if state == ABORTED:
        return withdrawn_tuple(last_error)
    return None


