"""Which processes run, with which version and settings, and where they disagree.

Every long-lived process (the API, each Celery worker, each stream consumer) publishes with its
heartbeat a *presence*: its role, the package version, and the value of each setting it reads that
must be the same in every process reading it (`READERS` says which role reads which setting, and
the documentation's settings table is checked against it). Secret values (URLs that may hold a
password, the console's signing key) are published only as a short SHA-256, so two processes can
be compared without the value leaving them.

`/readyz`, `ukcancel fleet` and the console's Workers page read `report()`: the live processes by
role, any setting (or version) that differs between live processes, and whether a stream consumer
is live. A disagreement is reported, not refused: during a rolling upgrade versions differ for a
while, and the operator decides.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from ukcancel import __version__, keys
from ukcancel.settings import Settings
from ukcancel.store import as_text

log = logging.getLogger(__name__)

API, WORKER, STREAM_CONSUMER, CLI = "api", "worker", "stream-consumer", "cli"
ROLES = (API, WORKER, STREAM_CONSUMER)
HEARTBEAT_SECONDS = 5.0
LIVE_SECONDS = 3 * HEARTBEAT_SECONDS
FORGET_SECONDS = 3600.0  # a process not heard from this long is dropped from the record


@dataclass(frozen=True)
class Reader:
    """Which roles read a setting; `agree`: every live process reading it must have the same value;
    `secret`: published (and shown) only as a hash."""

    roles: tuple[str, ...]
    agree: bool = True
    secret: bool = False


# Every variable of `Settings.ENVIRONMENT`, with the processes that read it.
READERS: dict[str, Reader] = {
    # Every process shares the one Redis by definition (that is where they meet), so it is not compared.
    "REDIS_URL": Reader((API, WORKER, STREAM_CONSUMER, CLI), agree=False, secret=True),
    "CELERY_BROKER_URL": Reader((API, WORKER, STREAM_CONSUMER), secret=True),
    "UKSSDC_BASE_URL": Reader((WORKER,)),
    "UKCANCEL_UKSSDC_API_VERSION": Reader((WORKER,)),
    "UKCANCEL_UKSSDC_CONNECT_TIMEOUT_SECONDS": Reader((WORKER,)),
    "UKCANCEL_UKSSDC_TIMEOUT_SECONDS": Reader((WORKER,)),
    "UKCANCEL_MAX_ATTEMPTS": Reader((WORKER,)),
    "UKCANCEL_RETRY_BASE_SECONDS": Reader((WORKER,)),
    "UKCANCEL_RETRY_MAX_DELAY_SECONDS": Reader((WORKER,)),
    "UKCANCEL_RESULT_TTL_SECONDS": Reader((API, WORKER, STREAM_CONSUMER)),
    "UKCANCEL_MAX_WAIT_SECONDS": Reader((API,)),
    "UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS": Reader((API, WORKER, STREAM_CONSUMER)),
    "UKCANCEL_FLEET_RATE_PER_SECOND": Reader((WORKER,)),
    "UKCANCEL_FLEET_MAX_IN_FLIGHT": Reader((WORKER,)),
    "UKCANCEL_FLEET_MAX_WAIT_SECONDS": Reader((WORKER,)),
    "UKCANCEL_BREAKER_FAILURE_THRESHOLD": Reader((WORKER,)),
    "UKCANCEL_BREAKER_COOLDOWN_SECONDS": Reader((WORKER,)),
    "UKCANCEL_API_RATE_LIMIT": Reader((API,)),
    "UKCANCEL_CALLBACK_ALLOWED_HOSTS": Reader((API, WORKER, STREAM_CONSUMER)),
    "UKCANCEL_CALLBACK_MAX_ATTEMPTS": Reader((WORKER,)),
    "UKCANCEL_WORKER_CONCURRENCY": Reader((WORKER,), agree=False),
    "UKCANCEL_FLEET_GUARD_SECONDS": Reader((WORKER,)),
    "UKCANCEL_DISPATCH_LANES": Reader((API, WORKER, STREAM_CONSUMER)),
    "UKCANCEL_LEASE_SECONDS": Reader((WORKER,)),
    "UKCANCEL_RECONCILE_SECONDS": Reader((WORKER,)),
    "UKCANCEL_EXPANSION_TIMEOUT_SECONDS": Reader((WORKER,)),
    "UKCANCEL_JOB_STATUS_TTL_SECONDS": Reader((API, WORKER)),
    "UKCANCEL_PLAN_TTL_SECONDS": Reader((API, WORKER)),
    "UKCANCEL_CONSOLE_SECRET": Reader((API,), secret=True),
    "PROMETHEUS_MULTIPROC_DIR": Reader((API, WORKER), agree=False),
    "UKCANCEL_WORKER_METRICS_PORT": Reader((WORKER,), agree=False),
    "UKCANCEL_LOG_FORMAT": Reader((API, WORKER, STREAM_CONSUMER), agree=False),
    "UKCANCEL_API_URL": Reader((CLI,), agree=False),
    "UKCANCEL_TOKEN": Reader((CLI,), agree=False, secret=True),
    "UKCANCEL_REDIS_SENTINELS": Reader((API, WORKER, STREAM_CONSUMER, CLI)),
    "UKCANCEL_REDIS_SENTINEL_MASTER": Reader((API, WORKER, STREAM_CONSUMER, CLI)),
    "UKCANCEL_REDIS_SENTINEL_PASSWORD": Reader((API, WORKER, STREAM_CONSUMER, CLI), secret=True),
    "UKCANCEL_REDIS_MIN_REPLICAS": Reader((API, WORKER, STREAM_CONSUMER)),
    "UKCANCEL_REDIS_REPLICA_TIMEOUT_MS": Reader((API, WORKER, STREAM_CONSUMER)),
    "UKCANCEL_UKSSDC_DEADLINE_SECONDS": Reader((WORKER,)),
    "UKCANCEL_UKSSDC_MAX_REPLY_BYTES": Reader((WORKER,)),
    "UKCANCEL_RETRY_AFTER_MAX_SECONDS": Reader((WORKER,)),
    "UKCANCEL_WORKER_METRICS_ADDRESS": Reader((WORKER,), agree=False),
    "UKCANCEL_CONSOLE_INSECURE_COOKIE": Reader((API,)),
    "UKCANCEL_CONSOLE_SESSION_SECONDS": Reader((API,)),
    "UKCANCEL_QUOTA_QUEUED_COMMANDS": Reader((API, STREAM_CONSUMER)),
    "UKCANCEL_QUOTA_BATCHES_PER_HOUR": Reader((API,)),
    "UKCANCEL_QUOTA_PLANS_PER_HOUR": Reader((API,)),
    "UKCANCEL_QUOTA_LONG_POLLS": Reader((API,)),
    "UKCANCEL_METRICS_TOKEN": Reader((API,), secret=True),
    "UKCANCEL_METRICS_CACHE_SECONDS": Reader((API,)),
    "UKCANCEL_DEADLETTER_MAXLEN": Reader((STREAM_CONSUMER,)),
    "UKCANCEL_PIPELINE_STREAMS": Reader((API, STREAM_CONSUMER)),
}


def digest(value: str) -> str:
    """How a secret value is published: enough to tell two values apart, nothing to recover one."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def _shown(settings: Settings, variable: str, field_name: str) -> str:
    if variable == "CELERY_BROKER_URL":
        value: Any = settings.effective_broker_url
    else:
        value = getattr(settings, field_name)
    if value is None:
        text = ""
    elif isinstance(value, tuple):  # hosts, pipelines, or (host, port) pairs of Sentinels
        text = ",".join(":".join(map(str, item)) if isinstance(item, tuple) else str(item) for item in value)
    else:
        text = str(value)
    return digest(text) if READERS[variable].secret and text else text


def agreed_settings(settings: Settings, role: str) -> dict[str, str]:
    """The settings a process of `role` reads that must agree across processes, as published."""
    return {
        variable: _shown(settings, variable, field_name)
        for variable, field_name, _ in Settings.ENVIRONMENT
        if READERS[variable].agree and role in READERS[variable].roles
    }


def process_name(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def publish(connection: redis.Redis, name: str, role: str, settings: Settings, now: float | None = None) -> None:
    """Record that `name` (a process of `role`) is alive now, with its version and agreed settings."""
    now = time.time() if now is None else now
    info = json.dumps({"role": role, "version": __version__, "settings": agreed_settings(settings, role)})
    pipe = connection.pipeline(transaction=True)
    pipe.zadd(keys.PROCESSES, {name: now})
    pipe.hset(keys.PROCESSES_INFO, name, info)
    pipe.execute()
    stale = connection.zrangebyscore(keys.PROCESSES, "-inf", now - FORGET_SECONDS)
    if stale:
        pipe = connection.pipeline(transaction=True)
        pipe.zrem(keys.PROCESSES, *stale)
        pipe.hdel(keys.PROCESSES_INFO, *stale)
        pipe.execute()


def forget(connection: redis.Redis, name: str) -> None:
    """A process stopping cleanly leaves at once rather than ageing out."""
    pipe = connection.pipeline(transaction=True)
    pipe.zrem(keys.PROCESSES, name)
    pipe.hdel(keys.PROCESSES_INFO, name)
    pipe.execute()


class Publisher:
    """Publishes a process's presence at most every `HEARTBEAT_SECONDS` (for call sites that run
    often, such as the API's requests); `beat()` never raises for Redis being away.

    `start_beating()` publishes from a daemon thread (a greenlet under gevent) as well: an API
    process that serves no request for a while (gunicorn's other worker, when one takes every
    connection) is still live, not aged out of `ukcancel fleet` and `/readyz`."""

    def __init__(self, connection: redis.Redis, role: str, settings: Settings, name: str | None = None) -> None:
        self.connection, self.role, self.settings = connection, role, settings
        self.name = name or process_name(role)
        self._last = float("-inf")
        self._beating: threading.Thread | None = None
        self._stop = threading.Event()

    def start_beating(self) -> threading.Thread:
        """Beat every heartbeat from now on, in the process that calls it (after gunicorn's fork),
        until `stop_beating()`; a second call starts no second beat."""
        if self._beating is None:

            def beat_until_stopped() -> None:
                while not self._stop.is_set():
                    try:
                        self.beat(force=True)
                    except Exception:  # a defect must not silently end the process's presence
                        log.exception("presence beat failed (the next beat tries again)")
                    self._stop.wait(HEARTBEAT_SECONDS)

            self._beating = threading.Thread(target=beat_until_stopped, name="ukcancel-presence", daemon=True)
            self._beating.start()
        return self._beating

    def stop_beating(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join(HEARTBEAT_SECONDS)

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < HEARTBEAT_SECONDS:
            return
        self._last = now
        try:
            publish(self.connection, self.name, self.role, self.settings)
        except redis.RedisError:  # Redis away: the probes say so; the next beat tries again
            self._last = float("-inf")


@dataclass(frozen=True)
class Process:
    name: str
    role: str
    version: str
    settings: dict[str, str]
    seen: float


def live_processes(connection: redis.Redis, now: float | None = None) -> list[Process]:
    now = time.time() if now is None else now
    names_scores = connection.zrangebyscore(keys.PROCESSES, now - LIVE_SECONDS, "+inf", withscores=True)
    if not names_scores:
        return []
    names = [as_text(name) for name, _ in names_scores]
    infos = connection.hmget(keys.PROCESSES_INFO, names)
    processes = []
    for (name, seen), raw in zip(names_scores, infos):
        if raw is None:
            continue
        info = json.loads(as_text(raw))
        processes.append(Process(as_text(name), info["role"], info["version"], info["settings"], float(seen)))
    return sorted(processes, key=lambda p: (ROLES.index(p.role) if p.role in ROLES else 9, p.name))


def disagreements(processes: Iterable[Process]) -> dict[str, dict[str, list[str]]]:
    """{setting (or "version"): {value: [process names]}} for each that has two values or more."""
    seen: dict[str, dict[str, list[str]]] = {}
    for process in processes:
        seen.setdefault("version", {}).setdefault(process.version, []).append(process.name)
        for variable, value in process.settings.items():
            seen.setdefault(variable, {}).setdefault(value, []).append(process.name)
    return {variable: values for variable, values in sorted(seen.items()) if len(values) > 1}


def report(connection: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """What `/readyz`, `ukcancel fleet` and the console show: live processes by role, the
    settings they disagree on, and what is missing."""
    processes = live_processes(connection, now)
    counts = {role: sum(1 for p in processes if p.role == role) for role in ROLES}
    problems = []
    if not counts[STREAM_CONSUMER]:
        problems.append("no live stream consumer: entries XADDed to ukcancel:commands wait unread")
    disagree = disagreements(processes)
    for variable, values in disagree.items():
        problems.append(f"{variable} differs between processes: " + "; ".join(
            f"{value or '(unset)'} in {', '.join(names)}" for value, names in values.items()))
    return {
        "processes": [{"name": p.name, "role": p.role, "version": p.version, "seen": p.seen} for p in processes],
        "counts": counts,
        "disagreements": disagree,
        "problems": problems,
    }
