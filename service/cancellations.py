"""`/v1/cancellations`: enqueue a cancel command, list them, read one back (long poll), withdraw it."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request, url_for
from flask.views import MethodView
from werkzeug.exceptions import Conflict, NotFound, UnprocessableEntity

from ukcancel import lifecycle, submission
from ukcancel.command import QUEUED, CancelCommand
from ukcancel.listing import CommandFilter, CommandListing
from ukcancel.schemas import CancellationRequestSchema, CancellationSchema, submission_policy
from ukcancel.service.auth import authenticate, principal
from ukcancel.service.current import get_quotas, get_runtime
from ukcancel.service.http_schemas import (
    AcceptedSchema,
    CancellationListQuerySchema,
    CancellationPageSchema,
    IdempotencyHeaderSchema,
    WaitQuerySchema,
)
from ukcancel.service.openapi import Blueprint, problems
from ukcancel.service.problems import require_json_body
from ukcancel.service.rate_limit import waiting_at_hit
from ukcancel.service.replicas import require_replicas
from ukcancel.token import Principal

blp = Blueprint("cancellations", __name__, url_prefix="/v1/cancellations", description="Cancel commands")
blp.before_request(authenticate)
blp.before_request(require_json_body)
# Argument schemas are given as instances, built once: given a class, webargs builds a new schema
# (deep-copying its fields) on every request.

COMMAND_ID = re.compile(r"^[0-9a-f]{32}$")


def visible_command(command_id: str, caller: Principal) -> CancelCommand:
    """The command if it exists and the caller may see it; 404 otherwise, so existence does not leak."""
    command = get_runtime().registry.get(command_id) if COMMAND_ID.match(command_id) else None
    if command is None or not caller.may_see(command.user_id):
        raise NotFound(f"No cancel command {command_id}.")
    return command


def under_submission_policy(view: Callable[..., Any]) -> Callable[..., Any]:
    """Load the view's request schemas against this service's policy (e.g. allowed callback hosts)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with submission_policy(get_runtime().settings):
            return view(*args, **kwargs)

    return wrapper


def listing_scope(caller: Principal, user_id: str | None) -> str | None:
    """Whose commands a listing shows: an admin's without `user_id` every user's (None), else the
    user's the caller may act for (403 for another's, unless admin)."""
    if caller.admin and user_id is None:
        return None
    return caller.acting_for(user_id)


def body_digest() -> str:
    """SHA-256 of the JSON body in canonical form: key order and spacing do not make a different body."""
    canonical = json.dumps(request.get_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@blp.route("")
class Cancellations(MethodView):
    @blp.arguments(CancellationListQuerySchema(), location="query")
    @blp.response(200, CancellationPageSchema)
    @problems(blp, 401, 429, 503, described={403: "user_id names another user and the token is not an admin's."})
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The caller's cancel commands, newest first, a page at a time.

        Follow `next_cursor` (as `cursor`) until it is null; with filters a page may hold fewer
        than `limit` items before the end. An admin token lists every user's commands unless
        `user_id` names one.
        """
        whose = listing_scope(principal(), query.get("user_id"))
        created_after = query.get("created_after")
        where = CommandFilter(
            state=query.get("state"),
            job_id=query.get("job_id"),
            created_after=created_after.timestamp() if created_after is not None else None,
        )
        page = CommandListing(get_runtime().registry).page_of(whose, where, query.get("cursor"), query["limit"])
        return {"items": page.items, "next_cursor": page.next_cursor}

    @under_submission_policy
    @blp.arguments(CancellationRequestSchema())
    @blp.arguments(IdempotencyHeaderSchema(), location="headers")
    @blp.response(202, AcceptedSchema, description="Accepted; poll the Location for the result.")
    @blp.alt_response(
        200, schema=CancellationSchema, success=True,
        description="Replay: this Idempotency-Key and body were seen before; the original command.",
    )
    @problems(blp, 401, 413, 415, 429, described={
        400: "The body is not valid JSON.",
        403: "user_id names another user and the token is not an admin's.",
        422: "Invalid request, or an Idempotency-Key reused with a different body.",
        503: "The task broker (or the store) is unavailable; nothing was enqueued. Or (with "
             "UKCANCEL_REDIS_MIN_REPLICAS) no replica confirmed the write in time: retrying with the same "
             "Idempotency-Key is safe.",
    })
    def post(
        self, request_data: dict[str, Any], headers: dict[str, Any]
    ) -> tuple[dict[str, str], int, dict[str, str]] | Response:
        """Enqueue a cancel command for one job."""
        caller = principal()
        user_id = caller.acting_for(request_data.get("user_id"))
        get_quotas().check_commands(user_id, waiting=waiting_at_hit(user_id))
        key = headers["idempotency_key"]
        reservation = submission.Reservation.idempotency_key(caller.token_name, key, body_digest()) if key else None
        try:
            submitted = submission.submit(get_runtime(), caller, request_data, reservation)
        except submission.ReservationMismatch as exc:
            raise UnprocessableEntity(
                f"Idempotency-Key {key!r} was already used with a different request body (command "
                f"{exc.command_id}); use a new key for a new request."
            ) from None
        command = submitted.command
        location = url_for("cancellations.Cancellation", command_id=command.id)
        require_replicas(
            f"Command {command.id}",
            "Retrying with the same Idempotency-Key is safe: it answers with this command, or makes it again if "
            "it was lost." if key else
            f"Without an Idempotency-Key a retry may make a second command: GET {location} first.",
        )
        if not submitted.created:
            replay = current_app.json.response(CancellationSchema().dump(command))
            replay.headers["Location"] = location
            return replay
        return {"id": command.id, "state": QUEUED}, 202, {"Location": location}


@blp.route("/<command_id>")
class Cancellation(MethodView):
    @blp.arguments(WaitQuerySchema(), location="query")
    @blp.response(200, CancellationSchema)
    @problems(blp, 401, 429, 503, described={404: "No such command, or not the caller's."})
    def get(self, query: dict[str, Any], command_id: str) -> CancelCommand:
        """A cancel command and, once completed, its result tuple. `?wait=N` waits up to N s for the end."""
        command = visible_command(command_id, principal())
        wait = min(query["wait"], get_runtime().settings.max_wait_seconds)
        if wait and not command.terminal:
            command = get_runtime().registry.wait_terminal(command_id, wait) or command
        return command

    @blp.response(200, CancellationSchema)
    @problems(blp, 401, 429, 503, described={
        404: "No such command, or not the caller's.",
        409: "The command has started or ended; it can no longer be withdrawn.",
    })
    def delete(self, command_id: str) -> CancelCommand:
        """Withdraw a command that has not started: it becomes aborted and the UKSSDC is never called."""
        command = visible_command(command_id, principal())
        outcome = lifecycle.withdraw(get_runtime(), command)
        if not outcome.moved:
            raise Conflict(f"Command {command_id} is {outcome.state}; only a queued command can be withdrawn.")
        return get_runtime().registry.get(command_id) or command
