"""`/v1/jobs` and `/v1/plans`: a user's UKSSDC jobs with their product states, and plans of what to cancel.

The API never calls the UKSSDC. `GET /v1/jobs` answers from the cache (`ukcancel.jobs`) with
its age, asking a worker for a refresh when it is older than the status TTL (one refresh per
user at a time); `?wait=N` waits for that refresh. A plan (`ukcancel.plans`) is computed from
fresh states, then applied as one batch.
"""

from __future__ import annotations

import re
import time
from typing import Any

from flask import request, url_for
from flask.views import MethodView
from marshmallow import RAISE
from werkzeug.exceptions import Conflict, NotFound, ServiceUnavailable

from ukcancel import plans
from ukcancel.dispatch import DispatchError
from ukcancel.jobs import JobSelection
from ukcancel.plans import COMPUTING, Plan
from ukcancel.runtime import Runtime
from ukcancel.service.auth import authenticate, principal
from ukcancel.service.current import get_quotas, get_runtime
from ukcancel.service.job_schemas import (
    JobsQuerySchema,
    JobsSchema,
    PlanAcceptedSchema,
    PlanAppliedSchema,
    PlanListQuerySchema,
    PlanListSchema,
    PlanQuerySchema,
    PlanRequestSchema,
    PlanSchema,
)
from ukcancel.service.openapi import Blueprint, problems
from ukcancel.service.problems import require_json_body
from ukcancel.token import Principal

jobs_blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Your UKSSDC jobs and their product states")
plans_blp = Blueprint("plans", __name__, url_prefix="/v1/plans", description="Plans: what a selection would cancel")
jobs_blp.before_request(authenticate)
plans_blp.before_request(authenticate)

PLAN_ID = re.compile(r"^[0-9a-f]{32}$")
BROKER_DOWN = "The task broker is unavailable; try again later."


def plan_body_required() -> None:
    """`before_request`: a JSON body for creating a plan; applying one takes no body (or any JSON)."""
    if request.endpoint and request.endpoint.endswith("PlanApply") and not request.get_data(cache=True):
        return
    require_json_body()


plans_blp.before_request(plan_body_required)


def selection_of(query: dict[str, Any]) -> JobSelection:
    return JobSelection.from_query(query)


def jobs_view(rt: Runtime, user_id: str, selection: JobSelection, wait: int = 0) -> dict[str, Any]:
    """The user's cached jobs matching `selection`, with ages; asks for a refresh when they are stale.

    Raises `DispatchError` when a refresh is due and the broker will not take it.
    """
    cache = rt.jobs
    if not cache.fresh(user_id):
        cache.request_refresh(user_id, rt.dispatch.refresh_jobs)
    if wait:
        cache.wait_refreshed(user_id, min(wait, rt.settings.max_wait_seconds))
    listing, views = cache.views(user_id)
    now = time.time()
    jobs = []
    oldest = listing.listed_at if listing is not None else None
    for view in views:
        if selection.job_left_out(view.job):
            continue
        rows = selection.products_of(view)
        if (selection.products is not None or selection.state is not None) and not rows:
            continue
        read_at = view.states.read_at if view.states else None
        if read_at is not None and (oldest is None or read_at < oldest):
            oldest = read_at
        jobs.append({
            "job_id": view.job.job_id,
            "name": view.job.name,
            "submitted": view.job.submitted,
            "products": rows,
            "read_at": read_at,
            "age_seconds": round(now - read_at, 1) if read_at is not None else None,
            "error": view.states.error if view.states and view.states.error else None,
        })
    return {
        "user_id": user_id,
        "listed_at": listing.listed_at if listing else None,
        "age_seconds": round(now - oldest, 1) if oldest is not None else None,
        "refreshing": cache.refreshing(user_id),
        "fresh": cache.fresh_views(listing, views),  # judged on what is shown, not read again
        "error": listing.error if listing else None,
        "total": len(views),
        "jobs": jobs,
    }


def visible_plan(plan_id: str, caller: Principal) -> Plan:
    """The plan if it exists and the caller may see it; 404 otherwise, so existence does not leak."""
    plan = get_runtime().plans.get(plan_id) if PLAN_ID.match(plan_id) else None
    if plan is None or not caller.may_see(plan.user_id):
        raise NotFound(f"No plan {plan_id}.")
    return plan


def plan_view(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "user_id": plan.user_id,
        "submitted_by": plan.submitted_by,
        "state": plan.state,
        "selection": {k: v for k, v in plan.selection.to_json().items() if v is not None},
        "created_at": plan.created_at,
        "computed_at": plan.computed_at,
        "expires_at": plan.expires_at,
        "expired": plan.batch_id is None and plan.expired(time.time()),
        "counts": plan.counts,
        "pairs": plan.pairs,
        "left_out": plan.left_out,
        "error": plan.error,
        "batch_id": plan.batch_id,
    }


def read_plan(plan_id: str, caller: Principal, wait: int = 0) -> Plan:
    """A visible plan, kept moving while computing (a lost refresh is asked for again), after `wait` s at most."""
    rt = get_runtime()
    plan = visible_plan(plan_id, caller)
    if plan.state == COMPUTING:
        try:
            plans.ensure_progress(rt, plan)
        except DispatchError:
            raise ServiceUnavailable(BROKER_DOWN) from None
        if wait:
            plan = rt.plans.wait_computed(plan_id, min(wait, rt.settings.max_wait_seconds)) or plan
        else:
            plan = rt.plans.get(plan_id) or plan
    return plan


def apply_plan(plan: Plan, caller: Principal) -> tuple[str, bool]:
    """(batch id, created); the API's errors as HTTP exceptions (409 not ready/expired/empty, 503)."""
    if not plan.batch_id and plan.state == plans.READY:
        get_quotas().check_batch(plan.user_id, len(plan.pairs))
    try:
        return plans.apply(get_runtime(), plan, caller.token_name)
    except (plans.PlanNotReady, plans.PlanExpired, plans.NothingToApply) as exc:
        raise Conflict(str(exc)) from None


@jobs_blp.route("")
class Jobs(MethodView):
    @jobs_blp.arguments(JobsQuerySchema(), location="query", unknown=RAISE)  # a typo is not "no filter"
    @jobs_blp.response(200, JobsSchema)
    @problems(jobs_blp, 401, 422, 429, described={
        403: "user_id names another user and the token is not an admin's.",
        503: "A refresh was due and the task broker is unavailable.",
    })
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Your UKSSDC jobs with each product's state as last read, and its age.

        Stale states (older than UKCANCEL_JOB_STATUS_TTL_SECONDS) are shown as they are while a
        worker reads newer ones; `?wait=N` waits up to N s for that refresh to end. Admin tokens
        may name a `user_id`.
        """
        caller = principal()
        user_id = caller.acting_for(query.get("user_id"))
        try:
            return jobs_view(get_runtime(), user_id, selection_of(query), query["wait"])
        except DispatchError:
            raise ServiceUnavailable(BROKER_DOWN) from None


@plans_blp.route("")
class Plans(MethodView):
    @plans_blp.arguments(PlanRequestSchema())
    @plans_blp.response(202, PlanAcceptedSchema, description="Accepted; follow the Location for the plan.")
    @problems(plans_blp, 401, 413, 415, 422, 429, described={
        403: "user_id names another user and the token is not an admin's.",
        503: "The task broker is unavailable.",
    })
    def post(self, request_data: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Plan a cancellation: the active products of the jobs the selection matches, computed from fresh states."""
        caller = principal()
        user_id = caller.acting_for(request_data.get("user_id"))
        get_quotas().check_plan(user_id)
        plan = Plan(user_id, selection_of(request_data), caller.token_name)
        try:
            plan = plans.start(get_runtime(), plan)
        except DispatchError:
            raise ServiceUnavailable(BROKER_DOWN) from None
        return {"id": plan.id, "state": plan.state}, 202, {"Location": url_for("plans.PlanResource", plan_id=plan.id)}


    @plans_blp.arguments(PlanListQuerySchema(), location="query", unknown=RAISE)
    @plans_blp.response(200, PlanListSchema)
    @problems(plans_blp, 401, 422, 429, described={
        403: "user_id names another user and the token is not an admin's.",
    })
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Your plans, newest first (while their records are kept): how `ukcancel plan apply` finds a plan by the start of its id."""
        user_id = principal().acting_for(query.get("user_id"))
        items = [{"id": p.id, "user_id": p.user_id, "state": p.state, "created_at": p.created_at,
                  "expires_at": p.expires_at, "batch_id": p.batch_id}
                 for p in get_runtime().plans.recent(user_id, query["limit"])]
        return {"items": items}


@plans_blp.route("/<plan_id>")
class PlanResource(MethodView):
    @plans_blp.arguments(PlanQuerySchema(), location="query", unknown=RAISE)
    @plans_blp.response(200, PlanSchema)
    @problems(plans_blp, 401, 422, 429, 503, described={404: "No such plan, or not the caller's."})
    def get(self, query: dict[str, Any], plan_id: str) -> dict[str, Any]:
        """A plan: the exact (job, products) pairs applying it cancels, the jobs left out and why, its expiry."""
        return plan_view(read_plan(plan_id, principal(), query["wait"]))


@plans_blp.route("/<plan_id>/apply")
class PlanApply(MethodView):
    @plans_blp.response(202, PlanAppliedSchema, description="The batch was made; follow the Location.")
    @plans_blp.alt_response(200, schema=PlanAppliedSchema, success=True,
                            description="Applied before: the same batch (applying twice makes one batch).")
    @problems(plans_blp, 401, 429, described={
        404: "No such plan, or not the caller's.",
        409: "The plan is computing, failed, expired or has nothing to cancel.",
        503: "The task broker is unavailable; nothing was enqueued.",
    })
    def post(self, plan_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Apply a ready plan: one batch of exactly its pairs. Idempotent: a second apply names the same batch."""
        caller = principal()
        plan = visible_plan(plan_id, caller)
        batch_id, created = apply_plan(plan, caller)
        batch = get_runtime().batches.get(batch_id)
        body = {"id": batch_id, "plan_id": plan.id, "state": batch.state if batch else "running",
                "total": batch.total if batch else len(plan.pairs)}
        return body, 202 if created else 200, {"Location": url_for("batches.BatchResource", batch_id=batch_id)}
