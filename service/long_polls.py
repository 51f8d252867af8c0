"""The per-user cap on long polls (`UKCANCEL_QUOTA_LONG_POLLS`, see `ukcancel.quota`).

A long poll holds a server thread (or greenlet) and a pub/sub watch for up to
`UKCANCEL_MAX_WAIT_SECONDS`. Requests that wait: any API GET with `wait` above 0, and the
console's live fragments (`X-Console-Live`, or the routes they fetch). Each takes one of its
user's slots for as long as it runs; past the cap it is answered at once with a 429 problem (a
page, in the console) naming the limit `long_polls`. Requests with no identifiable user (no
valid token, no console session) are not counted here: they are refused by authentication.
"""

from __future__ import annotations

import redis
from flask import Flask, g, request, session

from ukcancel.service.auth import bearer_record
from ukcancel.service.current import get_quotas, get_runtime

CONSOLE_LIVE_ENDPOINTS = frozenset({"console.jobs_table", "console.plan_live", "console.command_live",
                                    "console.batch_live"})
_HELD = "ukcancel_long_poll_user"


def is_long_poll() -> bool:
    if request.method != "GET":
        return False
    if request.path.startswith("/console/"):
        return bool(request.headers.get("X-Console-Live")) or request.endpoint in CONSOLE_LIVE_ENDPOINTS
    # Most requests have no query string: answered without parsing one (probes run thousands a second).
    if not request.query_string or not request.path.startswith("/v1/"):
        return False
    wait = request.args.get("wait", "")
    return wait.strip() not in ("", "0")


def poller() -> str | None:
    """The user whose slot this request takes: its token's, or its console session's."""
    if request.path.startswith("/console/"):
        held = session.get("console")
        if not isinstance(held, dict):
            return None
        record = get_runtime().tokens.by_digest(str(held.get("digest", "")))
    else:
        record = bearer_record()
    return record.user_id if record is not None else None


def install_long_poll_cap(app: Flask) -> None:
    @app.before_request
    def take_slot() -> None:
        if not is_long_poll():
            return
        user_id = poller()
        if user_id is None:
            return
        get_quotas().take_long_poll(user_id)  # QuotaExceeded: the app answers 429
        g.setdefault(_HELD, user_id)

    @app.teardown_request
    def give_slot(_exc: BaseException | None) -> None:
        user_id = g.pop(_HELD, None)
        if user_id is not None:
            try:
                get_quotas().give_long_poll(user_id)
            except redis.RedisError:  # the slot's counter expires on its own (`POLL_SLOT_SECONDS`)
                pass
