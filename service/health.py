"""Liveness and readiness probes; open to everyone, like `/openapi.json`."""

from __future__ import annotations

from typing import Any

import redis
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ukcancel import __version__, presence
from ukcancel.fleet import live_workers
from ukcancel.service.current import get_runtime

blp = Blueprint("health", __name__, description="Probes")


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200)
    def get(self) -> dict[str, str]:
        """The process is alive; `version` is the release it runs."""
        return {"status": "ok", "version": __version__}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200)
    @blp.alt_response(503, description="Redis unreachable or no live worker; the body says which.")
    def get(self) -> tuple[dict[str, Any], int]:
        """Ready when Redis answers and at least one worker has sent a heartbeat recently.

        A fleet pause (a UKSSDC Retry-After, at most UKCANCEL_RETRY_AFTER_MAX_SECONDS) is reported
        as status "degraded" with `checks.fleet_paused_seconds` > 0, still 200: the API keeps
        accepting, listing and withdrawing commands (a load balancer must not take it away), but
        no UKSSDC call is made until the pause ends or `ukcancel fleet --resume` lifts it.
        The body also shows the live stream consumers and any setting (or version) that differs
        between live processes, under `problems`; those are reported, not a reason for 503.
        """
        runtime = get_runtime()
        checks: dict[str, Any] = {}
        try:
            runtime.connection.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unreachable: {exc}"
            return {"status": "unavailable", "checks": checks}, 503
        workers = live_workers(runtime.connection)
        checks["workers"] = len(workers) if workers else "no live worker"
        breaker = runtime.gate.breaker_state()
        checks["ukssdc_breaker"] = breaker["state"]
        paused = runtime.gate.paused_for()
        checks["fleet_paused_seconds"] = round(paused, 1)
        current_app.extensions["ukcancel_presence"].beat(force=True)  # this process is in the comparison
        fleet = presence.report(runtime.connection)
        checks["stream_consumers"] = fleet["counts"][presence.STREAM_CONSUMER] or "no live stream consumer"
        checks["settings"] = "agree" if not fleet["disagreements"] else fleet["disagreements"]
        status = "unavailable" if not workers else "degraded" if paused > 0 else "ok"
        body: dict[str, Any] = {"status": status, "checks": checks}
        if fleet["problems"]:
            body["problems"] = fleet["problems"]
        return body, 503 if not workers else 200

