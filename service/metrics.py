"""`/metrics`: Prometheus metrics, open like the probes (no token), in the text exposition format.

`count_requests(app)` counts every answer by method, route and status, with its latency.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST

from ukcancel import metrics
from ukcancel.service.openapi import problems
from ukcancel.service.runtime import get_runtime

blp = Blueprint("metrics", __name__, description="Prometheus metrics")

REGISTRY_EXTENSION = "ukcancel.metrics"


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "Prometheus text format.",
                                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
    @problems(blp, described={503: "The store (Redis) is unavailable: its gauges cannot be read."})
    def get(self) -> Response:
        """Counters of this host's processes (all of them under PROMETHEUS_MULTIPROC_DIR) and store gauges."""
        registry = current_app.extensions.get(REGISTRY_EXTENSION)
        if registry is None:
            registry = metrics.scrape_registry(get_runtime())
            current_app.extensions[REGISTRY_EXTENSION] = registry
        return Response(metrics.render(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)


def count_requests(app: Flask) -> None:
    """Count and time every request; installed first, so it also sees those the rate limit refuses."""

    @app.before_request
    def start_clock() -> None:
        g.request_started = time.perf_counter()

    # The labelled children, looked up once per (method, route, status) rather than per request.
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[tuple[str, str], Any] = {}

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        seconds = time.perf_counter() - g.get("request_started", time.perf_counter())
        method, status = request.method, response.status_code
        counter = counters.get((method, route, status))
        if counter is None:
            counter = counters[(method, route, status)] = metrics.HTTP_REQUESTS.labels(method, route, str(status))
        timer = timers.get((method, route))
        if timer is None:
            timer = timers[(method, route)] = metrics.HTTP_REQUEST_SECONDS.labels(method, route)
        counter.inc()
        timer.observe(seconds)
        return response
