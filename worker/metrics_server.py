"""The worker's scrape target: its pool processes' counters on `UKCANCEL_WORKER_METRICS_PORT`.

A bootstep of the worker's main process, started before the pool is forked: prefork children
write their counters to PROMETHEUS_MULTIPROC_DIR and this process serves the directory's sum.
Failing to bind the port is logged, not fatal: a worker without metrics still cancels jobs.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from ukcancel import metrics

log = logging.getLogger(__name__)


class MetricsEndpoint(bootsteps.StartStopStep):
    """Serves `ukcancel.metrics.process_registry` over HTTP when a port is configured."""

    def start(self, worker: Any) -> None:
        settings = worker.app.runtime.settings
        if settings.worker_metrics_port is None:
            return
        if worker.pool_cls.__module__.endswith("prefork") and not settings.metrics_multiproc_dir:
            log.warning("prefork pool without PROMETHEUS_MULTIPROC_DIR: the pool's counters will not be served")
        try:
            metrics.serve_process_metrics(settings, settings.worker_metrics_port, settings.worker_metrics_address)
        except OSError as exc:
            log.error("worker metrics not served on port %s: %s", settings.worker_metrics_port, exc)
            return
        log.info("worker metrics on %s port %s", settings.worker_metrics_address, settings.worker_metrics_port)
