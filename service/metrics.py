"""`/metrics`: Prometheus metrics, open like the probes (no token), in the text exposition format."""

from __future__ import annotations

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST

from ukcancel import metrics
from ukcancel.service.runtime import get_runtime

blp = Blueprint("metrics", __name__, description="Prometheus metrics")

REGISTRY_EXTENSION = "ukcancel.metrics"


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "Prometheus text format.",
                                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def get(self) -> Response:
        """Counters of this host's processes (all of them under PROMETHEUS_MULTIPROC_DIR) and store gauges."""
        registry = current_app.extensions.get(REGISTRY_EXTENSION)
        if registry is None:
            registry = metrics.scrape_registry(get_runtime())
            current_app.extensions[REGISTRY_EXTENSION] = registry
        return Response(metrics.render(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
