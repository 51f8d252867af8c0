"""Plans: exactly what a selection of jobs would cancel, before anything is cancelled.

A plan is asked for with a `JobSelection` (`POST /v1/plans`). It is `computing` until the
user's job states are fresh (a worker refreshes them, `ukcancel.jobs`), then `ready` with the
exact (job, products) pairs whose products are active now (states 1, 2, 3, 5) and match the
selection, the jobs left out and why, and an expiry `plan_ttl_seconds` later: states change,
so an old plan is not applied. Applying a ready plan (`apply`) makes one batch of exactly those
pairs through `ukcancel.submission.enqueue_batch`; applying it again names the same batch.

    computing ──> ready ──(apply, once, before expires_at)──> batch_id set
        └──> failed (the jobs could not be listed)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import redis

from ukcancel import keys, submission
from ukcancel.batch import Batch, BatchState, new_batch_id
from ukcancel.codes import ACTIVE_STATES
from ukcancel.command import CancelCommand
from ukcancel.events import EventListener
from ukcancel.jobs import JobSelection, JobView
from ukcancel.store import as_text, as_text_dict

if TYPE_CHECKING:
    from ukcancel.jobs import JobCache



class PlanState(StrEnum):
    """A plan's state, as its record stores it and the API shows it (the values never change)."""

    COMPUTING = "computing"
    READY = "ready"
    FAILED = "failed"  # the jobs could not be listed


COMPUTING, READY = PlanState.COMPUTING, PlanState.READY
PLAN_STATES = tuple(state.value for state in PlanState)
Clock = Callable[[], float]

# KEYS[1] plan   ARGV[1] JSON object of fields to set
# Settles a computing plan once; a plan already ready or failed is left as it is (0).
_SETTLE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'computing' then return 0 end
local fields = cjson.decode(ARGV[1])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, value) end
return 1
"""


class PlanNotReady(ValueError):
    """The plan is still computing, or failed: there is nothing to apply."""


class PlanExpired(ValueError):
    """The plan is older than its expiry and was never applied: make a new one."""


class NothingToApply(ValueError):
    """The plan found no active product to cancel."""


def new_plan_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Plan:
    user_id: str
    selection: JobSelection
    submitted_by: str | None = None
    state: str = COMPUTING
    id: str = field(default_factory=new_plan_id)
    created_at: float = 0.0
    pairs: list[dict[str, Any]] = field(default_factory=list)  # {job_id, name, products}
    left_out: list[dict[str, Any]] = field(default_factory=list)  # {job_id, name, reason}
    computed_at: float | None = None
    expires_at: float | None = None
    error: str | None = None
    batch_id: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {
            "jobs": len(self.pairs),
            "products": sum(len(pair["products"]) for pair in self.pairs),
            "left_out": len(self.left_out),
        }

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @classmethod
    def from_hash(cls, raw: dict[bytes | str, bytes | str]) -> Plan:
        data = as_text_dict(raw)
        return cls(
            id=data["id"],
            user_id=data["user_id"],
            selection=JobSelection.from_json(json.loads(data.get("selection") or "{}")),
            submitted_by=data.get("submitted_by") or None,
            state=data["state"],
            created_at=float(data.get("created_at") or 0),
            pairs=json.loads(data.get("pairs") or "[]"),
            left_out=json.loads(data.get("left_out") or "[]"),
            computed_at=float(data["computed_at"]) if data.get("computed_at") else None,
            expires_at=float(data["expires_at"]) if data.get("expires_at") else None,
            error=data.get("error") or None,
            batch_id=data.get("batch_id") or None,
        )


def compute(selection: JobSelection, views: list[JobView]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (job, active products) pairs `selection` picks from `views`, and the jobs left out with why."""
    pairs, left_out = [], []
    for view in views:
        job = view.job
        reason = selection.job_left_out(job)
        if reason is None and view.states is None:
            reason = "its product states have not been read"
        elif reason is None and view.states.error:
            reason = f"the UKSSDC would not give its product states: {view.states.error}"
        products = [] if reason else [row["name"] for row in selection.products_of(view, ACTIVE_STATES)]
        if reason is None and not products:
            shown = [row for row in view.product_rows()
                     if selection.products is None or row["name"] in selection.products]
            states = ", ".join(f"{row['name']} {row['state_text'] or 'unknown'}" for row in shown)
            reason = "no active product to cancel" + (f" ({states})" if states else "")
        if reason:
            left_out.append({"job_id": job.job_id, "name": job.name, "reason": reason})
        else:
            pairs.append({"job_id": job.job_id, "name": job.name, "products": products})
    return pairs, left_out


class PlanRegistry:
    """Stores plans. Redis keys owned: ``ukcancel:plan:{id}``, ``ukcancel:plans:waiting:{user}`` and
    the channel ``ukcancel:events:plan:{id}`` (see `ukcancel.keys`)."""

    def __init__(self, connection: redis.Redis, ttl_seconds: int, plan_ttl_seconds: float,
                 clock: Clock = time.time, events: EventListener | None = None) -> None:
        self.connection = connection
        self.events = events if events is not None else EventListener(connection)
        self.ttl_seconds = ttl_seconds
        self.plan_ttl_seconds = plan_ttl_seconds
        self.clock = clock
        self._settle = connection.register_script(_SETTLE)

    def add(self, plan: Plan) -> Plan:
        """Store a new computing plan, waiting for its user's refresh."""
        plan.created_at = self.clock()
        key = keys.plan(plan.id)
        mapping = {"id": plan.id, "user_id": plan.user_id, "state": plan.state, "created_at": repr(plan.created_at),
                   "selection": json.dumps(plan.selection.to_json())}
        if plan.submitted_by:
            mapping["submitted_by"] = plan.submitted_by
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl_seconds)
        pipe.sadd(keys.plans_waiting(plan.user_id), plan.id)
        pipe.expire(keys.plans_waiting(plan.user_id), self.ttl_seconds)
        index = keys.user_plans(plan.user_id)  # GET /v1/plans, and the plans-per-hour quota (`ukcancel.quota`)
        pipe.zadd(index, {plan.id: plan.created_at})
        pipe.zremrangebyscore(index, "-inf", plan.created_at - max(self.ttl_seconds, 3600))
        pipe.expire(index, max(self.ttl_seconds, 3600))
        pipe.execute()
        return plan

    def recent(self, user_id: str, limit: int) -> list[Plan]:
        """The user's plans, newest first (those whose record is still kept)."""
        ids = [as_text(i) for i in self.connection.zrevrange(keys.user_plans(user_id), 0, limit - 1)]
        pipe = self.connection.pipeline(transaction=False)
        for plan_id in ids:
            pipe.hgetall(keys.plan(plan_id))
        return [Plan.from_hash(raw) for raw in pipe.execute() if raw]

    def get(self, plan_id: str) -> Plan | None:
        raw = self.connection.hgetall(keys.plan(plan_id))
        return Plan.from_hash(raw) if raw else None

    def settle(self, plan: Plan, views: list[JobView] | None, error: str | None = None) -> bool:
        """Compute a waiting plan from `views` (or fail it with `error`); False if it was settled before."""
        now = self.clock()
        if error is not None:
            fields = {"state": PlanState.FAILED, "error": error, "computed_at": repr(now)}
        else:
            pairs, left_out = compute(plan.selection, views or [])
            fields = {"state": READY, "pairs": json.dumps(pairs), "left_out": json.dumps(left_out),
                      "computed_at": repr(now), "expires_at": repr(now + self.plan_ttl_seconds)}
        settled = bool(self._settle(keys=[keys.plan(plan.id)], args=[json.dumps(fields)]))
        pipe = self.connection.pipeline(transaction=True)
        pipe.srem(keys.plans_waiting(plan.user_id), plan.id)
        if settled:
            pipe.publish(keys.plan_events(plan.id), fields["state"])
        pipe.execute()
        return settled

    def waiting(self, user_id: str) -> list[str]:
        return sorted(as_text(member) for member in self.connection.smembers(keys.plans_waiting(user_id)))

    def claim_batch(self, plan_id: str, batch_id: str, pipe: redis.client.Pipeline) -> str | None:
        """Watch the plan on `pipe` and, unless it already names a batch, start the transaction
        that names `batch_id` (the caller adds the batch and executes: a concurrent apply then
        fails with `WatchError`). Returns the batch already named, if any; raises `PlanExpired`
        when the plan is gone (never writing a stub without its expiry)."""
        pipe.watch(keys.plan(plan_id))
        exists, named = pipe.exists(keys.plan(plan_id)), pipe.hget(keys.plan(plan_id), "batch_id")
        if not exists:
            raise PlanExpired(f"Plan {plan_id} expired; make a new plan (states may have changed).")
        if named:
            return as_text(named)
        pipe.multi()
        pipe.hset(keys.plan(plan_id), "batch_id", batch_id)
        return None

    def wait_computed(self, plan_id: str, timeout: float) -> Plan | None:
        """The plan once it is no longer computing, or as it stands after `timeout` s (no polling)."""
        with self.events.watching(keys.plan_events(plan_id)) as waiter:
            plan = self.get(plan_id)
            deadline = time.monotonic() + timeout
            while plan is not None and plan.state == COMPUTING:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or waiter.wait(remaining) is None:
                    break
                plan = self.get(plan_id)
            return plan


# -- the flows, shared by the API and the worker ---------------------------------------------------
class PlanParts(submission.SubmissionParts, Protocol):
    """What the plan flows need of a process's objects (a `ukcancel.runtime.Runtime` has them all)."""

    @property
    def plans(self) -> PlanRegistry: ...
    @property
    def jobs(self) -> JobCache: ...


def settle_waiting(runtime: PlanParts, user_id: str, error: str | None = None) -> int:
    """After a refresh of `user_id`'s jobs: compute (or fail) every plan waiting for it."""
    waiting = runtime.plans.waiting(user_id)
    if not waiting:
        return 0
    views = None if error else runtime.jobs.views(user_id)[1]
    settled = 0
    for plan_id in waiting:
        plan = runtime.plans.get(plan_id)
        if plan is None:
            runtime.connection.srem(keys.plans_waiting(user_id), plan_id)
            continue
        settled += runtime.plans.settle(plan, views, error)
    return settled


def start(runtime: PlanParts, plan: Plan) -> Plan:
    """Store a new plan and have it computed: now, if the user's cache is fresh; else after a refresh.

    Raises `ukcancel.dispatch.DispatchError` when no refresh can be sent (the plan is then failed).
    """
    runtime.plans.add(plan)
    ensure_progress(runtime, plan)
    return runtime.plans.get(plan.id) or plan


def ensure_progress(runtime: PlanParts, plan: Plan) -> None:
    """A computing plan is computed from a fresh cache, or a refresh is under way that will compute it.

    The plan is in the waiting set before a refresh is looked for, and a refresh ends by clearing
    its flag and then settling the waiting set: so either that refresh settles the plan, or no
    refresh is under way and one is asked for (or the cache is fresh and the plan settled here).
    """
    if plan.state != COMPUTING:
        return
    jobs = runtime.jobs
    if not jobs.refreshing(plan.user_id):
        listing, views = jobs.views(plan.user_id)  # read once: judged fresh, then computed from
        if listing is not None and not listing.error and jobs.fresh_views(listing, views):
            runtime.plans.settle(plan, views)
            return
    try:
        jobs.request_refresh(plan.user_id, runtime.dispatch.refresh_jobs)
    except Exception:
        runtime.plans.settle(plan, None, "the task broker was unavailable; the plan could not be computed")
        raise


def apply(runtime: PlanParts, plan: Plan, submitted_by: str | None) -> tuple[str, bool]:
    """Make the plan's batch; (batch id, created). Applying again returns the same batch, not created.

    Raises `PlanNotReady`, `PlanExpired` and `NothingToApply`. The plan names its batch in the
    same transaction that makes the batch, so a concurrent apply answers with a batch that exists.
    """
    if plan.batch_id:
        return plan.batch_id, False
    if plan.state != READY:
        raise PlanNotReady(f"Plan {plan.id} is {plan.state}" + (f": {plan.error}" if plan.error else "; wait for it."))
    if plan.expired(runtime.plans.clock()):
        raise PlanExpired(f"Plan {plan.id} expired; make a new plan (states may have changed).")
    if not plan.pairs:
        raise NothingToApply(f"Plan {plan.id} has no active product to cancel.")
    for _ in range(submission.RESERVATION_ROUNDS):
        batch_id = new_batch_id()
        commands = [
            CancelCommand(job_id=int(pair["job_id"]), user_id=plan.user_id, products=list(pair["products"]),
                          submitted_by=submitted_by)
            for pair in plan.pairs
        ]
        with runtime.connection.pipeline(transaction=True) as pipe:
            named = runtime.plans.claim_batch(plan.id, batch_id, pipe)
            if named is not None:  # a concurrent apply made the plan's batch first
                return named, False
            batch = Batch(plan.user_id, submitted_by, state=BatchState.RUNNING, id=batch_id)
            staged = submission.stage_batch(runtime, batch, commands, pipe)
            try:
                results = pipe.execute()
            except redis.WatchError:
                continue  # the plan changed between WATCH and EXEC: read it again
        staged.send_turns(results)
        return batch_id, True
    raise redis.WatchError(f"plan {plan.id} kept changing")

