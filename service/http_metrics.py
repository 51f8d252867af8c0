"""`/metrics`: Prometheus metrics in the text exposition format.

Open like the probes unless `UKCANCEL_METRICS_TOKEN` is set; then a scrape must send
`Authorization: Bearer <that token>` (Prometheus: `authorization: {credentials: ...}`), else 401.
Not rate-limited: a scrape is cheap (`ukcancel.metrics.StoreCollector` caches what costs).

`count_requests(app)` counts every answer by method, route and status, with its latency.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import Unauthorized

from ukcancel import metrics
from ukcancel.service.current import get_runtime
from ukcancel.service.openapi import problems

blp = Blueprint("metrics", __name__, description="Prometheus metrics")

REGISTRY_EXTENSION = "ukcancel.metrics"


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "Prometheus text format.",
                                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
    @problems(blp, described={401: "UKCANCEL_METRICS_TOKEN is set and the request does not carry it.",
                              503: "The store (Redis) is unavailable: its gauges cannot be read."})
    def get(self) -> Response:
        """Counters of this host's processes (all of them under PROMETHEUS_MULTIPROC_DIR) and store gauges.

        With UKCANCEL_METRICS_TOKEN set, only for `Authorization: Bearer <that token>` (else 401).
        """
        required = get_runtime().settings.metrics_token
        if required:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), required.encode()):
                raise _MetricsUnauthorized("/metrics requires the scrape token (UKCANCEL_METRICS_TOKEN).")
        registry = current_app.extensions.get(REGISTRY_EXTENSION)
        if registry is None:
            registry = metrics.scrape_registry(get_runtime())
            current_app.extensions[REGISTRY_EXTENSION] = registry
        return Response(metrics.render(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)


class _MetricsUnauthorized(Unauthorized):
    def get_headers(self, environ=None, scope=None):  # type: ignore[no-untyped-def]
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", 'Bearer realm="ukcancel-metrics"')]


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
