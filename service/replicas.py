"""Acknowledge only what survives a failover: `WAIT` for `UKCANCEL_REDIS_MIN_REPLICAS` replicas
(`ukcancel.store.confirm_replicas`) before a 202, or answer 503 saying what to do."""

from __future__ import annotations

from werkzeug.exceptions import ServiceUnavailable

from ukcancel.service.current import get_runtime
from ukcancel.store import ReplicasUnconfirmed, confirm_replicas


def require_replicas(what: str, retry: str) -> None:
    """Return once enough replicas hold every write so far; else 503 naming `what` and how to `retry`."""
    runtime = get_runtime()
    settings = runtime.settings
    try:
        confirm_replicas(runtime.connection, settings.redis_min_replicas, settings.redis_replica_timeout_ms)
    except ReplicasUnconfirmed as exc:
        raise ServiceUnavailable(
            f"{what} was written, but the write was not confirmed by a replica ({exc}), so a Redis failover "
            f"now could lose it. {retry}"
        ) from None
