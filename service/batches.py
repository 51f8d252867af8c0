"""`/v1/batches`: many cancellations (or every active product of a user) in one request.

Accepting a batch costs one Redis round trip and at most a turn per lane, whatever its size: the
commands, their places in the schedule and the batch's item order go in one pipeline
(`ukcancel.submission.enqueue_batch`), and running turns send their successors.
"""

from __future__ import annotations

import re
from typing import Any

from flask import request, url_for
from flask.views import MethodView
from werkzeug.exceptions import Conflict, NotFound

from ukcancel import lifecycle, submission
from ukcancel.batch import EXPANDING, Batch, BatchState, estimate_seconds
from ukcancel.fleet import OPEN
from ukcancel.service.auth import authenticate, principal
from ukcancel.service.batch_schemas import (
    BatchAcceptedSchema,
    BatchQuerySchema,
    BatchRequestSchema,
    BatchSchema,
)
from ukcancel.service.current import get_quotas, get_runtime
from ukcancel.service.openapi import Blueprint, problems
from ukcancel.service.problems import require_json_body
from ukcancel.service.rate_limit import waiting_at_hit
from ukcancel.service.replicas import require_replicas
from ukcancel.token import Principal

blp = Blueprint("batches", __name__, url_prefix="/v1/batches", description="Batches of cancel commands")

# 10,000 items of up to seven product names each; the service's default body limit is for one item.
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
BATCH_ID = re.compile(r"^[0-9a-f]{32}$")
# Items read per round trip when withdrawing a whole batch.
WITHDRAW_CHUNK = 1000


def allow_batch_body() -> None:
    """`before_request`: lift the body limit for this blueprint only, before anything reads the body."""
    request.max_content_length = MAX_BATCH_BODY_BYTES


blp.before_request(allow_batch_body)
blp.before_request(authenticate)
blp.before_request(require_json_body)
# Argument schemas are given as instances, built once: given a class, webargs builds a new schema
# (deep-copying its fields) on every request.


def visible_batch(batch_id: str, caller: Principal) -> Batch:
    """The batch if it exists and the caller may see it; 404 otherwise, so existence does not leak."""
    batch = get_runtime().batches.get(batch_id) if BATCH_ID.match(batch_id) else None
    if batch is None or not caller.may_see(batch.user_id):
        raise NotFound(f"No batch {batch_id}.")
    return batch


def batch_view(batch: Batch, cursor: int = 0, limit: int = 100) -> dict[str, Any]:
    """The batch with counts over all its items, an ETA and one page of items."""
    rt = get_runtime()
    progress = rt.batches.progress(batch.id)
    state = rt.batches.state_of(batch, progress)
    eta = None
    if state == BatchState.RUNNING:
        gate = rt.gate
        breaker = gate.breaker_state()
        blocked_for = max(gate.paused_for(), float(breaker["retry_in"]) if breaker["state"] == OPEN else 0.0)
        eta = estimate_seconds(
            progress, rt.schedule.depth(), batch.user_id, gate.limits().rate_per_second, blocked_for
        )
    items = rt.batches.items(batch.id, cursor, limit) if cursor < batch.total else []
    following = cursor + len(items)
    return {
        "id": batch.id,
        "user_id": batch.user_id,
        "submitted_by": batch.submitted_by,
        "created_at": batch.created_at,
        "state": state,
        "error": batch.error,
        "total": batch.total,
        "counts": progress.counts,
        "results": progress.results,
        "done_fraction": round(progress.terminal / batch.total, 4) if batch.total else (1.0 if state == BatchState.COMPLETED else 0.0),
        "eta_seconds": eta,
        "items": items,
        "next_cursor": str(following) if following < batch.total else None,
    }


@blp.route("")
class Batches(MethodView):
    @blp.arguments(BatchRequestSchema())
    @blp.response(202, BatchAcceptedSchema, description="Accepted; follow the Location for progress and results.")
    @problems(blp, 401, 413, 415, 429, described={
        400: "The body is not valid JSON.",
        403: "user_id names another user and the token is not an admin's.",
        422: "Invalid request; item errors are pointers such as /items/3/job_id.",
        503: "The task broker (or the store) is unavailable; nothing was enqueued. Or (with "
             "UKCANCEL_REDIS_MIN_REPLICAS) no replica confirmed the write in time; the problem says what to do.",
    })
    def post(self, request_data: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Enqueue a batch of cancellations, or of every active product of the user (`all_active`)."""
        caller = principal()
        user_id = caller.acting_for(request_data["user_id"])
        get_quotas().check_batch(user_id, 0 if request_data["all_active"] else len(request_data["items"]),
                                 waiting_at_hit(user_id))
        if request_data["all_active"]:
            batch = submission.start_expansion(get_runtime(), Batch(user_id, caller.token_name, state=EXPANDING))
        else:
            commands = [submission.new_command(caller, {**item, "user_id": user_id}) for item in request_data["items"]]
            batch = submission.enqueue_batch(get_runtime(), Batch(user_id, caller.token_name, state=BatchState.RUNNING), commands)
        location = url_for("batches.BatchResource", batch_id=batch.id)
        require_replicas(
            f"Batch {batch.id}",
            f"GET {location}: if it answers, the batch stands; if it is not found, submit the batch again.",
        )
        return {"id": batch.id, "state": batch.state, "total": batch.total}, 202, {"Location": location}


@blp.route("/<batch_id>")
class BatchResource(MethodView):
    @blp.arguments(BatchQuerySchema(), location="query")
    @blp.response(200, BatchSchema)
    @problems(blp, 401, 429, 503, described={404: "No such batch, or not the caller's."})
    def get(self, query: dict[str, Any], batch_id: str) -> dict[str, Any]:
        """A batch's progress, ETA and a page of its items. `?wait=N` waits up to N s for every item to end."""
        batch = visible_batch(batch_id, principal())
        wait = min(query["wait"], get_runtime().settings.max_wait_seconds)
        if wait and batch.state != BatchState.FAILED:
            get_runtime().batches.wait_done(batch_id, wait)
            batch = get_runtime().batches.get(batch_id) or batch
        return batch_view(batch, query["cursor"], query["limit"])

    @blp.response(200, BatchSchema)
    @problems(blp, 401, 429, 503, described={
        404: "No such batch, or not the caller's.",
        409: "The batch is still expanding; its items do not exist yet.",
    })
    def delete(self, batch_id: str) -> dict[str, Any]:
        """Withdraw every item that has not started; started and finished items are left as they are."""
        batch = visible_batch(batch_id, principal())
        if batch.state == EXPANDING:
            raise Conflict(f"Batch {batch_id} is still expanding; withdraw it once it is running.")
        rt = get_runtime()
        lifecycle.withdraw_batch(rt, batch_id)
        return batch_view(rt.batches.get(batch_id) or batch)
