"""Liveness and readiness probes; open to everyone, like `/openapi.json`."""

from __future__ import annotations

from typing import Any

import redis
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ukcancel import presence
from ukcancel.fleet import live_workers
from ukcancel.service.runtime import get_runtime

blp = Blueprint("health", __name__, description="Probes")


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200)
    def get(self) -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200)
    @blp.alt_response(503, description="Redis unreachable or no live worker; the body says which.")
    def get(self) -> tuple[dict[str, Any], int]:
        """Ready when Redis answers and at least one worker has sent a heartbeat recently.

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
        current_app.extensions["ukcancel_presence"].beat(force=True)  # this process is in the comparison
        fleet = presence.report(runtime.connection)
        checks["stream_consumers"] = fleet["counts"][presence.STREAM_CONSUMER] or "no live stream consumer"
        checks["settings"] = "agree" if not fleet["disagreements"] else fleet["disagreements"]
        ready = bool(workers)
        body: dict[str, Any] = {"status": "ok" if ready else "unavailable", "checks": checks}
        if fleet["problems"]:
            body["problems"] = fleet["problems"]
        return body, 200 if ready else 503

