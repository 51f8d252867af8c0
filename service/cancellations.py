"""`/v1/cancellations`: enqueue a cancel command, read it back (long poll), withdraw it."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from kombu.exceptions import KombuError
from werkzeug.exceptions import Conflict, NotFound, ServiceUnavailable

from ukcancel.command import QUEUED, CancelCommand
from ukcancel.runtime import Runtime
from ukcancel.service.auth import Principal, authenticate, principal
from ukcancel.service.problems import require_json_body
from ukcancel.service.schemas import AcceptedSchema, CancellationRequestSchema, CancellationSchema, WaitQuerySchema

blp = Blueprint("cancellations", __name__, url_prefix="/v1/cancellations", description="Cancel commands")
blp.before_request(authenticate)
blp.before_request(require_json_body)

COMMAND_ID = re.compile(r"^[0-9a-f]{32}$")


def runtime() -> Runtime:
    return current_app.extensions["ukcancel"]


def visible_command(command_id: str, caller: Principal) -> CancelCommand:
    """The command if it exists and the caller may see it; 404 otherwise, so existence does not leak."""
    command = runtime().registry.get(command_id) if COMMAND_ID.match(command_id) else None
    if command is None or not caller.may_see(command.user_id):
        raise NotFound(f"No cancel command {command_id}.")
    return command


def announce_terminal(command_id: str) -> None:
    for hook in runtime().terminal_hooks:
        hook(command_id)


@blp.route("")
class Cancellations(MethodView):
    @blp.arguments(CancellationRequestSchema)
    @blp.response(202, AcceptedSchema, description="Accepted; poll the Location for the result.")
    @blp.alt_response(422, description="Invalid request (problem+json naming the field).")
    def post(self, request_data: dict[str, Any]) -> tuple[dict[str, str], int, dict[str, str]]:
        """Enqueue a cancel command for one job."""
        caller = principal()
        command = CancelCommand(
            job_id=request_data["job_id"],
            user_id=caller.acting_for(request_data["user_id"]),
            products=request_data["products"],
            submitted_by=caller.token_name,
        )
        enqueue(command)
        location = url_for("cancellations.Cancellation", command_id=command.id)
        return {"id": command.id, "state": QUEUED}, 202, {"Location": location}


def enqueue(command: CancelCommand) -> None:
    """Store and dispatch; if the broker cannot take the turn, withdraw the record and answer 503."""
    rt = runtime()
    try:
        rt.queue.enqueue([command])
    except KombuError as exc:
        rt.registry.transition(command.id, "aborted", (QUEUED,), fields={"last_error": f"broker unavailable: {exc}"})
        rt.queue.remove_waiting(command)
        raise ServiceUnavailable("The task broker is unavailable; nothing was enqueued. Try again later.") from None


@blp.route("/<command_id>")
class Cancellation(MethodView):
    @blp.arguments(WaitQuerySchema, location="query")
    @blp.response(200, CancellationSchema)
    def get(self, query: dict[str, Any], command_id: str) -> CancelCommand:
        """A cancel command and, once completed, its result tuple. `?wait=N` waits up to N s for the end."""
        command = visible_command(command_id, principal())
        wait = min(query["wait"], runtime().settings.max_wait_seconds)
        if wait and not command.terminal:
            command = runtime().registry.wait_terminal(command_id, wait) or command
        return command

    @blp.response(200, CancellationSchema)
    @blp.alt_response(409, description="The command has started or ended; it can no longer be withdrawn.")
    def delete(self, command_id: str) -> CancelCommand:
        """Withdraw a command that has not started: it becomes aborted and the UKSSDC is never called."""
        command = visible_command(command_id, principal())
        outcome = runtime().registry.withdraw(command_id)
        if not outcome.moved:
            raise Conflict(f"Command {command_id} is {outcome.state}; only a queued command can be withdrawn.")
        runtime().queue.remove_waiting(command)
        announce_terminal(command_id)
        return runtime().registry.get(command_id) or command
