"""The web console: server-rendered pages under /console, in the API's own Flask app.

- Sign in once with a bearer token; the session is then an HttpOnly, SameSite=Strict, Secure
  cookie (`UKCANCEL_CONSOLE_INSECURE_COOKIE=1` drops Secure, for plain-HTTP development only)
  signed with `UKCANCEL_CONSOLE_SECRET` (no default: without it every console page is a 404
  saying the console is off). The cookie holds the token's name and SHA-256, never the token,
  and a random session id whose record in Redis (``ukcancel:console:session:{id}``) signing out
  deletes: a copy of the cookie taken before sign-out is worth nothing after it. The record
  expires after `UKCANCEL_CONSOLE_SESSION_SECONDS`. The token is looked up on every request,
  so revoking it ends its sessions at once.
- Pages cannot be framed (`Content-Security-Policy: frame-ancestors 'none'`, `X-Frame-Options:
  DENY`) and are never cached (`Cache-Control: no-store`: they show tokens and users' data).
- Every form carries a CSRF token (Flask-WTF's `generate_csrf` / `validate_csrf`); a POST
  without a valid one is refused with a page saying so.
- The same isolation as the API: another user's command, batch or plan is a 404.
- Input is validated by the API's own marshmallow schemas, so a bad filter or form shows the
  same messages the API would answer with.
- Pages update live: an element with `data-live` is re-fetched by static/console.js; the
  fragment routes hold the request with the API's long polls (pub/sub) while nothing changes.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from marshmallow import Schema, ValidationError, fields, validate
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import Conflict, HTTPException, NotFound, ServiceUnavailable
from wtforms.validators import ValidationError as WtfValidationError

from ukcancel import lifecycle, plans, presence
from ukcancel.batch import EXPANDING, BatchState
from ukcancel.command import TERMINAL
from ukcancel.dispatch import DispatchError
from ukcancel.listing import CommandFilter, CommandListing
from ukcancel.plans import COMPUTING, Plan
from ukcancel.quota import QuotaExceeded
from ukcancel.schemas import CancellationSchema
from ukcancel.service.batches import batch_view, visible_batch
from ukcancel.service.cancellations import listing_scope, visible_command
from ukcancel.service.current import get_quotas, get_runtime
from ukcancel.service.http_schemas import CancellationListQuerySchema
from ukcancel.service.job_schemas import JobFilterSchema, PlanRequestSchema
from ukcancel.service.jobs import apply_plan, jobs_view, plan_view, read_plan, selection_of, visible_plan
from ukcancel.sessions import ConsoleSessions
from ukcancel.settings import MIN_FLEET_RATE_PER_SECOND
from ukcancel.stream import recent_dead_letters
from ukcancel.token import NotPermitted, Principal, TokenError, digest

blp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")

SESSION_KEY = "console"
PUBLIC_ENDPOINTS = {"console.signin", "console.static", "console.no_such_page"}
LIVE_WAIT_SECONDS = 20  # how long a live fragment holds the request while nothing changes
FILTER_FIELDS = ("name", "submitted_after", "submitted_before", "products", "state", "job_ids")


def install_console(app: Flask, secret: str | None, *, insecure_cookie: bool = False,
                    session_seconds: int = 12 * 3600) -> None:
    """Register the console; with a secret, sign its session cookie with it (else the console is off)."""
    app.config.update(
        CONSOLE_ENABLED=bool(secret),
        SESSION_COOKIE_NAME="ukcancel_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_SECURE=not insecure_cookie,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=session_seconds),
        CONSOLE_SESSION_SECONDS=session_seconds,
        WTF_CSRF_FIELD_NAME="csrf_token",
    )
    if secret:
        app.secret_key = secret
    app.register_blueprint(blp)


# -- who is signed in ---------------------------------------------------------------------------------
def signed_in() -> Principal | None:
    held = session.get(SESSION_KEY)
    if not isinstance(held, dict):
        return None
    session_id = str(held.get("sid", ""))
    if not session_id or not sessions().is_open(session_id):
        return None  # signed out (or expired) on the server: the cookie alone is not enough
    record = get_runtime().tokens.by_digest(str(held.get("digest", "")))
    if record is None or record.name != held.get("name"):
        return None  # revoked (or replaced) since the sign-in
    return Principal.from_token(record)


@blp.before_request
def guard() -> Response | None:
    from flask import current_app

    if not current_app.config.get("CONSOLE_ENABLED"):
        raise NotFound("console-off")
    g.console_user = signed_in()
    if request.method == "POST":
        try:
            validate_csrf(request.form.get("csrf_token"))
        except WtfValidationError as exc:
            raise CSRFError(str(exc)) from None
    if request.endpoint not in PUBLIC_ENDPOINTS and g.console_user is None:
        if request.headers.get("X-Console-Live"):
            return Response("signed out", status=401, headers={"X-Live-Done": "1"})
        return redirect(url_for("console.signin", next=request.full_path if request.method == "GET" else None))
    return None


def user() -> Principal:
    return g.console_user


def sessions() -> ConsoleSessions:
    return ConsoleSessions(get_runtime().connection)


def require_admin() -> None:
    if not user().admin:
        raise NotFound("No such page.")  # as the API: what a user may not see does not exist for them


@blp.app_template_filter("counted")
def counted(count: int, noun: str) -> str:
    """"1 item", "2 items" (the console's counts)."""
    return f"{count:,} {noun if count == 1 else noun + 's'}"


@blp.app_context_processor
def helpers() -> dict[str, Any]:
    return {"csrf_token": generate_csrf, "when": when, "ago": ago, "console_user": g.get("console_user"),
            "status_tuple": status_tuple, "fragment": is_fragment(), "live_url": live_url, "page_url": page_url}


def is_fragment() -> bool:
    """A page's live part only (`?fragment=1`, what static/console.js re-fetches), without the layout."""
    return request.method == "GET" and request.args.get("fragment") == "1"


def live_url() -> str:
    """This page with its query, as a fragment."""
    args = MultiDict(request.args)
    args["fragment"] = "1"
    return url_for(request.endpoint, **request.view_args, **args.to_dict(flat=True))


def page_url() -> str:
    """This page with its query, whole (where a form inside a live part comes back to)."""
    args = MultiDict(request.args)
    args.pop("fragment", None)
    return url_for(request.endpoint, **request.view_args, **args.to_dict(flat=True))


@blp.after_request
def not_cached_not_framed(response: Response) -> Response:
    """Every console answer: never stored by a cache (pages show tokens and users' data), never
    shown inside another site's frame (a click in a frame could withdraw a command)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def when(value: Any) -> str:
    """An epoch or ISO time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if value in (None, ""):
        return ""
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(float(value), timezone.utc)
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    seconds = max(0.0, time.time() - float(epoch))
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def status_tuple(result: Any) -> str:
    """The result as `print(cancelStatus)` shows it in the UKSSDC's guide: the Python tuple."""
    if not isinstance(result, list) or len(result) != 2:
        return ""
    return repr((result[0], result[1]))


def problems(error: ValidationError) -> list[str]:
    """'field: message' lines, as the API's problem names them in `errors`."""
    lines: list[str] = []

    def walk(messages: Any, path: str) -> None:
        if isinstance(messages, dict):
            for name, inner in messages.items():
                walk(inner, f"{path}/{name}" if path else str(name))
        elif isinstance(messages, list):
            for message in messages:
                walk(message, path)
        else:
            lines.append(f"{path or 'request'}: {messages}")

    walk(error.messages, "")
    return lines


def form_values(source: MultiDict[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """The non-empty fields of a form or query string (checkbox lists joined by commas)."""
    values: dict[str, Any] = {}
    for name in names:
        given = [v.strip() for v in source.getlist(name) if v.strip()]
        if given:
            values[name] = ",".join(given)
    return values


# -- errors: pages, not problem documents -------------------------------------------------------------------
@blp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[str, int]:
    if exc.description == "console-off":
        return render_template("console/off.html"), 404
    return render_template("console/error.html", code=exc.code, message=exc.description), exc.code or 500


@blp.errorhandler(NotPermitted)
def not_permitted(exc: NotPermitted) -> tuple[str, int]:
    return render_template("console/error.html", code=403, message=str(exc)), 403


@blp.errorhandler(QuotaExceeded)
def quota_exceeded(exc: QuotaExceeded) -> tuple[str, int]:
    return render_template("console/error.html", code=429, message=exc.detail), 429


@blp.errorhandler(CSRFError)
def csrf_error(exc: CSRFError) -> tuple[str, int]:
    message = f"The form was refused: {exc.description} Reload the page and try again."
    return render_template("console/error.html", code=400, message=message), 400


# -- signing in and out -------------------------------------------------------------------------------------
@blp.route("/signin", methods=["GET", "POST"])
def signin() -> Any:
    error = None
    if request.method == "POST":
        token = request.form.get("token", "").strip()
        record = get_runtime().tokens.verify(token) if token else None
        if record is None:
            error = "The bearer token is unknown or revoked."
        else:
            end_server_session()
            session.clear()
            session_id = secrets.token_urlsafe(24)
            from flask import current_app

            sessions().open(session_id, record.name, int(current_app.config["CONSOLE_SESSION_SECONDS"]))
            session.permanent = True
            session[SESSION_KEY] = {"name": record.name, "digest": digest(token), "at": time.time(), "sid": session_id}
            landing = url_for("console.home" if record.admin else "console.jobs")
            return redirect(safe_back(request.args.get("next")) or landing)
    return render_template("console/signin.html", error=error), 401 if error else 200


def end_server_session() -> None:
    """Delete this cookie's session record: the cookie (and any copy of it) is signed out for good."""
    held = session.get(SESSION_KEY)
    if isinstance(held, dict) and held.get("sid"):
        sessions().close(str(held["sid"]))


@blp.route("/signout", methods=["POST"])
def signout() -> Response:
    end_server_session()
    session.clear()
    flash("Signed out.")
    return redirect(url_for("console.signin"))


@blp.route("/")
def home() -> Any:
    """A user's home is their jobs; an admin's is a page that says what the console offers them
    (an admin token usually names no UKSSDC user of its own, so it has no jobs to list)."""
    if not user().admin:
        return redirect(url_for("console.jobs"))
    connection = get_runtime().connection
    return render_template("console/admin_home.html", fleet=presence.report(connection), state=fleet_state(),
                           waiting=sum(get_runtime().schedule.depth().values()))


@blp.route("/<path:anything>")
def no_such_page(anything: str) -> Any:
    """A mistyped console address: the console's own 404 page, not the API's JSON problem."""
    raise NotFound(f"There is no console page at /console/{anything}.")


# -- jobs and plans ----------------------------------------------------------------------------------------------
def jobs_query() -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """(the raw filters, loaded filters or None, error lines) of this request's query string."""
    raw = form_values(request.args, (*FILTER_FIELDS, "user_id"))
    try:
        return raw, JobFilterSchema().load(raw), []
    except ValidationError as exc:
        return raw, None, problems(exc)


@blp.route("/jobs")
def jobs() -> tuple[str, int]:
    raw, loaded, errors = jobs_query()
    view = None
    # An admin names the user whose jobs to show; without one there is nothing to ask the UKSSDC.
    choose_user = loaded is not None and user().admin and not loaded.get("user_id")
    if loaded is not None and not choose_user:
        view = jobs_view_or_error(loaded)
    return render_template("console/jobs.html", raw=raw, view=view, errors=errors, choose_user=choose_user), \
        422 if errors else 200


def jobs_view_or_error(loaded: dict[str, Any], wait: int = 0) -> dict[str, Any]:
    user_id = user().acting_for(loaded.get("user_id"))
    try:
        return jobs_view(get_runtime(), user_id, selection_of(loaded), wait)
    except DispatchError:
        raise ServiceUnavailable("The task broker is unavailable; try again later.") from None


@blp.route("/jobs/table")
def jobs_table() -> Response:
    raw, loaded, errors = jobs_query()
    if loaded is None:
        return live(render_template("console/_jobs_table.html", raw=raw, view=None, errors=errors), done=True)
    view = jobs_view_or_error(loaded, wait=LIVE_WAIT_SECONDS)
    return live(render_template("console/_jobs_table.html", raw=raw, view=view, errors=[]), done=not view["refreshing"])


@blp.route("/plans", methods=["POST"])
def create_plan() -> Any:
    raw = form_values(request.form, (*FILTER_FIELDS, "user_id"))
    if "job_ids" not in raw and request.form.get("filter_job_ids"):
        raw["job_ids"] = request.form["filter_job_ids"]  # nothing ticked: the jobs the filter shows
    try:
        loaded = PlanRequestSchema().load(raw)
    except ValidationError as exc:
        filters = {k: v for k, v in raw.items() if k != "job_ids"}
        return render_template("console/jobs.html", raw=filters, view=None, errors=problems(exc)), 422
    plan = Plan(user().acting_for(loaded.get("user_id")), selection_of(loaded), user().token_name)
    get_quotas().check_plan(plan.user_id)
    try:
        plan = plans.start(get_runtime(), plan)
    except DispatchError:
        raise ServiceUnavailable("The task broker is unavailable; try again later.") from None
    return redirect(url_for("console.plan", plan_id=plan.id))


@blp.route("/plans/<plan_id>")
def plan(plan_id: str) -> str:
    return render_template("console/plan.html", plan=plan_view(read_plan(plan_id, user())))


@blp.route("/plans/<plan_id>/live")
def plan_live(plan_id: str) -> Response:
    shown = plan_view(read_plan(plan_id, user(), wait=LIVE_WAIT_SECONDS))
    return live(render_template("console/_plan.html", plan=shown), done=shown["state"] != COMPUTING)


@blp.route("/plans/<plan_id>/apply", methods=["POST"])
def apply(plan_id: str) -> Any:
    found = visible_plan(plan_id, user())
    try:
        batch_id, _ = apply_plan(found, user())
    except Conflict as exc:
        flash(str(exc.description))
        return redirect(url_for("console.plan", plan_id=plan_id))
    return redirect(url_for("console.batch", batch_id=batch_id))


# -- commands ---------------------------------------------------------------------------------------------------------
@blp.route("/commands")
def commands() -> Any:
    raw = form_values(request.args, ("state", "job_id", "created_after", "cursor", "user_id"))
    raw.setdefault("limit", request.args.get("limit") or "20")
    try:
        query = CancellationListQuerySchema().load(raw)
    except ValidationError as exc:
        return render_template("console/commands.html", raw=raw, page=None, errors=problems(exc)), 422
    whose = listing_scope(user(), query.get("user_id"))
    created_after = query.get("created_after")
    where = CommandFilter(state=query.get("state"), job_id=query.get("job_id"),
                          created_after=created_after.timestamp() if created_after is not None else None)
    page = CommandListing(get_runtime().registry).page_of(whose, where, query.get("cursor"), query["limit"])
    items = [CancellationSchema().dump(c) for c in page.items]
    return render_template("console/commands.html", raw=raw, page={"items": items, "next_cursor": page.next_cursor},
                           errors=[])


def command_page(command_id: str) -> dict[str, Any]:
    return CancellationSchema().dump(visible_command(command_id, user()))


@blp.route("/commands/<command_id>")
def command(command_id: str) -> str:
    return render_template("console/command.html", command=command_page(command_id))


@blp.route("/commands/<command_id>/live")
def command_live(command_id: str) -> Response:
    found = visible_command(command_id, user())
    if not found.terminal:
        found = get_runtime().registry.wait_terminal(command_id, LIVE_WAIT_SECONDS) or found
    shown = CancellationSchema().dump(found)
    return live(render_template("console/_command.html", command=shown), done=shown["state"] in TERMINAL)


@blp.route("/commands/<command_id>/withdraw", methods=["POST"])
def withdraw(command_id: str) -> Response:
    found = visible_command(command_id, user())
    outcome = lifecycle.withdraw(get_runtime(), found)
    if outcome.moved:
        flash(f"Command {command_id} withdrawn: the UKSSDC will not be called.")
    else:
        flash(f"Command {command_id} is {outcome.state}; only a queued command can be withdrawn.")
    return redirect(safe_back(request.form.get("back")) or url_for("console.command", command_id=command_id))


def safe_back(target: str | None) -> str | None:
    """A console path to come back to, or None: no other site, no header injection (CR/LF)."""
    if target and re.fullmatch(r"/console/[!#-~]*", target) and "//" not in target and "\\" not in target:
        return target
    return None


# -- batches --------------------------------------------------------------------------------------------------------
@blp.route("/batches")
def batches() -> str:
    rt = get_runtime()
    whose = user().acting_for(request.args.get("user_id") or None) if request.args.get("user_id") else user().user_id
    rows = []
    for batch_id in rt.batches.recent_ids(whose, 50):
        found = rt.batches.get(batch_id)
        if found is not None:
            rows.append(batch_view(found, 0, 1))
    return render_template("console/batches.html", rows=rows, whose=whose)


@blp.route("/batches/<batch_id>")
def batch(batch_id: str) -> str:
    return render_template("console/batch.html", batch=batch_view(visible_batch(batch_id, user()), 0, 100))


@blp.route("/batches/<batch_id>/live")
def batch_live(batch_id: str) -> Response:
    rt = get_runtime()
    found = visible_batch(batch_id, user())
    if found.state != BatchState.FAILED:
        rt.batches.wait_done(batch_id, 2)  # progress is worth showing every couple of seconds
        found = rt.batches.get(batch_id) or found
    shown = batch_view(found, 0, 100)
    return live(render_template("console/_batch.html", batch=shown), done=shown["state"] in ("completed", "failed"))


@blp.route("/batches/<batch_id>/withdraw", methods=["POST"])
def withdraw_batch(batch_id: str) -> Response:
    rt = get_runtime()
    found = visible_batch(batch_id, user())
    if found.state == EXPANDING:
        flash("The batch is still expanding; withdraw it once it is running.")
    else:
        withdrawn = len(lifecycle.withdraw_batch(rt, batch_id))
        flash(f"{withdrawn} queued items withdrawn; started items finish as usual.")
    return redirect(url_for("console.batch", batch_id=batch_id))


def live(body: str, done: bool) -> Response:
    """A fragment for static/console.js; `X-Live-Done` tells it to stop re-fetching."""
    response = Response(body, mimetype="text/html")
    if done:
        response.headers["X-Live-Done"] = "1"
    response.headers["Cache-Control"] = "no-store"
    return response


# -- administrators ---------------------------------------------------------------------------------------------------
class FleetLimitsSchema(Schema):
    """The console's fleet form: the limits `ukcancel fleet --rate/--in-flight` changes."""

    rate_per_second = fields.Float(required=True, validate=validate.Range(min=MIN_FLEET_RATE_PER_SECOND, max=1000))
    max_in_flight = fields.Integer(required=True, validate=validate.Range(min=1, max=1000))


class TokenFormSchema(Schema):
    user_id = fields.Email(required=True)
    name = fields.String(load_default=None, validate=validate.Regexp(
        r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", error="Must be 1-64 letters, digits or ._@- (starting with a letter or digit)."))
    admin = fields.Boolean(load_default=False)


def fleet_state() -> dict[str, Any]:
    return get_runtime().gate.status()


@blp.route("/admin/fleet", methods=["GET", "POST"])
def fleet() -> Any:
    require_admin()
    errors: list[str] = []
    if request.method == "POST":
        raw = form_values(request.form, ("rate_per_second", "max_in_flight"))
        try:
            loaded = FleetLimitsSchema().load(raw)
        except ValidationError as exc:
            errors = problems(exc)
        else:
            get_runtime().gate.configure(loaded["rate_per_second"], loaded["max_in_flight"])
            flash(f"Fleet limits changed: {loaded['rate_per_second']:g} calls/s, {loaded['max_in_flight']} in flight.")
            return redirect(url_for("console.fleet"))
    return render_template("console/fleet.html", fleet=fleet_state(), errors=errors), 422 if errors else 200


@blp.route("/admin/fleet/resume", methods=["POST"])
def resume_fleet() -> Response:
    """Lift a fleet pause (a UKSSDC Retry-After), as `ukcancel fleet --resume` does."""
    require_admin()
    left = get_runtime().gate.resume()
    flash(f"Fleet pause lifted ({left:.0f} s were left): workers call the UKSSDC again."
          if left else "The fleet was not paused.")
    return redirect(url_for("console.fleet"))


@blp.route("/admin/workers")
def workers() -> str:
    require_admin()
    rt = get_runtime()
    live_now = set(rt.gate.live_workers())
    rows = [{"name": name, "heartbeat": beat, "live": name in live_now} for name, beat in rt.gate.heartbeats()]
    return render_template("console/workers.html", rows=rows, fleet=presence.report(rt.connection))


@blp.route("/admin/queues")
def queues() -> str:
    require_admin()
    rt = get_runtime()
    oldest = rt.schedule.oldest_waiting_by_user()
    rows = [{"user_id": user_id, "waiting": waiting, "oldest": oldest.get(user_id)}
            for user_id, waiting in sorted(rt.schedule.depth().items())]
    return render_template("console/queues.html", rows=rows, due=rt.schedule.counts().due)


@blp.route("/admin/deadletters")
def deadletters() -> str:
    require_admin()
    return render_template("console/deadletters.html", entries=recent_dead_letters(get_runtime().connection, 100))


@blp.route("/admin/tokens", methods=["GET", "POST"])
def tokens() -> Any:
    require_admin()
    rt = get_runtime()
    errors: list[str] = []
    created = None
    if request.method == "POST":
        raw = form_values(request.form, ("user_id", "name", "admin"))
        try:
            loaded = TokenFormSchema().load(raw)
            created = rt.tokens.create(loaded["user_id"], name=loaded["name"], admin=loaded["admin"])
        except ValidationError as exc:
            errors = problems(exc)
        except TokenError as exc:
            errors = [str(exc)]
    status = 422 if errors else 200
    return render_template("console/tokens.html", rows=rt.tokens.list(), errors=errors, created=created), status


@blp.route("/admin/tokens/<name>/revoke", methods=["POST"])
def revoke(name: str) -> Response:
    require_admin()
    try:
        record = get_runtime().tokens.revoke(name)
    except TokenError as exc:
        raise NotFound(str(exc)) from None
    flash(f"Token {record.name} ({record.user_id}) revoked.")
    return redirect(url_for("console.tokens"))

