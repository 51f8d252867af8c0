"""Prometheus metrics of ukssdc-cancel: what the processes count, and what a scrape reads from Redis.

Counters and histograms are counted where things happen (the UKSSDC client, the fleet gate, the
cancellation run), in whichever process that is. Under gunicorn and Celery prefork every process
keeps its own values; with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client writes them to
files in that directory and `scrape_registry` adds them up, so one scrape of any API process sees
the host's API processes. Figures Redis already holds (commands by state, queue depth, breaker
state, fleet limits, live workers) are read at scrape time instead, so every API process reports
the same.

Workers are scraped on their own: with `UKCANCEL_WORKER_METRICS_PORT` set, each worker's main
process serves its pool processes' counters (`serve_process_metrics`, from their own
PROMETHEUS_MULTIPROC_DIR) on that port, one scrape target per worker. Sharing one directory between
the API and the workers of a host also works (the API's /metrics then adds them up), but not
across containers or pods, so the shipped layouts use worker endpoints.

A scrape costs O(1) in records: the store's gauges are computed at most once per
`UKCANCEL_METRICS_CACHE_SECONDS` (15 s) by each process, and their costly part, the commands by
state (a SCAN over every record), at most once per period for the whole fleet: the first process
to need it takes a short lock, counts, and leaves the tally in ``ukcancel:metrics:commands`` for
the others. Between computations every scrape answers the figures as they were (at most that
old). `UKCANCEL_METRICS_TOKEN` makes `/metrics` require `Authorization: Bearer <that token>`.

No label carries a user: `/metrics` may be open, and a UKSSDC UserID is an e-mail address. The queue
is shown as totals (commands waiting, users waiting, the longest line); per-user figures are for
admin tokens through the API (`GET /v1/cancellations?state=queued`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ukcancel import keys
from ukcancel.command import STATES
from ukcancel.outcome import result_status
from ukcancel.store import as_text

if TYPE_CHECKING:
    from ukcancel.schedule import Schedule
    from ukcancel.settings import Settings

UKSSDC_CALLS = Counter(
    "ukcancel_ukssdc_calls",
    "UKSSDC calls by endpoint and outcome (ok, refused = OK 0, http_<status>, read_timeout, ...).",
    ["endpoint", "outcome"],
)
UKSSDC_CALL_SECONDS = Histogram(
    "ukcancel_ukssdc_call_duration_seconds",
    "Time from sending a UKSSDC request to having its answer (or failure).",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
PERMIT_WAIT_SECONDS = Histogram(
    "ukcancel_fleet_permit_wait_seconds",
    "Time a worker waited in the fleet gate; outcome granted, or deferred (the task is rescheduled).",
    ["outcome"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
RETRIES = Counter(
    "ukcancel_command_retries",
    "Cancel commands sent round again after a transient failure or an unsettled outcome.",
)
EMPTY_TURNS = Counter(
    "ukcancel_dispatch_empty_turns",
    "Turns that found nothing to claim (they end at once: no permit, no call).",
)
RECONCILER_TURNS = Counter(
    "ukcancel_dispatch_reconciler_turns",
    "Turns the reconciler sent because runnable work had none on its way (lost or never sent).",
)
RECONCILER_EXPANSIONS = Counter(
    "ukcancel_dispatch_reconciler_expansions",
    "all_active expansions the reconciler sent again because theirs was not heard from in time.",
)
LEASES_TAKEN_OVER = Counter(
    "ukcancel_dispatch_leases_taken_over",
    "Commands whose lease expired (their worker was lost) and that another turn took over.",
)
RESULTS = Counter(
    "ukcancel_command_results",
    "Cancel commands completed, by the status of their cancelProducts() tuple (-1, 0, 1, 2).",
    ["status"],
)

HTTP_REQUESTS = Counter(
    "ukcancel_http_requests",
    "HTTP requests answered, by method, route (the URL rule, not the path: ids do not make labels) and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "ukcancel_http_request_duration_seconds",
    "Time from a request's arrival to its answer (long polls included: see the route).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

BREAKER_STATES = ("closed", "half-open", "open")
SCAN_BATCH = 1000


def count_call(endpoint: str, outcome: str, seconds: float) -> None:
    UKSSDC_CALLS.labels(endpoint, outcome).inc()
    UKSSDC_CALL_SECONDS.labels(endpoint).observe(seconds)


def count_result(result: list[Any]) -> None:
    RESULTS.labels(str(result[0])).inc()


class GateReadings(Protocol):
    """The fleet gate's state a scrape reads (`ukcancel.fleet.FleetGate`, which imports this module)."""

    def live_workers(self) -> list[str]: ...
    def breaker_state(self) -> dict[str, Any]: ...
    def in_flight(self) -> int: ...
    def paused_for(self) -> float: ...
    def limits(self) -> Any: ...


class StoreParts(Protocol):
    """What a scrape reads of a process's objects (a `ukcancel.runtime.Runtime` has them all)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def connection(self) -> Any: ...
    @property
    def schedule(self) -> Schedule: ...
    @property
    def gate(self) -> GateReadings: ...


class StoreCollector(Collector):
    """Gauges read from Redis: commands by state, queue depth, the fleet's state.

    Computed at most once per `cache_seconds` (the answer in between is the last one), so the
    scrape rate does not multiply the store's work; `clock` is injectable for tests.
    """

    def __init__(self, runtime: StoreParts, cache_seconds: float | None = None,
                 clock: Any = time.monotonic) -> None:
        self.runtime = runtime
        self.cache_seconds = runtime.settings.metrics_cache_seconds if cache_seconds is None else cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._computed_at: float | None = None
        self.computations = 0  # how often the gauges were computed (for tests and curiosity)

    def collect(self) -> Iterator[Metric]:
        """The figures over records and users (cached), then the fleet's own (a few O(1) reads, live)."""
        with self._lock:
            now = self.clock()
            if self._computed_at is None or now - self._computed_at >= self.cache_seconds:
                self._families = list(self._compute())
                self._computed_at = now
                self.computations += 1
            families = list(self._families)
        yield from families
        yield from self._fleet()

    def _compute(self) -> Iterator[Metric]:
        yield self._commands_by_state()
        lines = [waiting for waiting in self.runtime.schedule.depth().values() if waiting]
        yield GaugeMetricFamily(
            "ukcancel_queue_depth", "Commands waiting for a worker, all users' lines together.", value=sum(lines)
        )
        yield GaugeMetricFamily("ukcancel_queue_users", "Users with commands waiting.", value=len(lines))
        yield GaugeMetricFamily(
            "ukcancel_queue_longest_line", "Commands waiting in the longest user's line.", value=max(lines, default=0)
        )
        yield from self._schedule()

    def _fleet(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ukcancel_live_workers", "Workers that sent a heartbeat recently (as /readyz counts them).",
            value=len(self.runtime.gate.live_workers()),
        )
        gate = self.runtime.gate
        breaker = gate.breaker_state()
        state = GaugeMetricFamily(
            "ukcancel_fleet_breaker_state", "1 for the circuit breaker's current state.", labels=["state"]
        )
        for name in BREAKER_STATES:
            state.add_metric([name], 1.0 if breaker["state"] == name else 0.0)
        yield state
        yield GaugeMetricFamily(
            "ukcancel_fleet_breaker_failures", "Consecutive transient UKSSDC failures.", value=float(breaker["failures"])
        )
        yield GaugeMetricFamily("ukcancel_fleet_in_flight", "UKSSDC calls holding a permit now.", value=gate.in_flight())
        yield GaugeMetricFamily(
            "ukcancel_fleet_paused_seconds", "Seconds left of a fleet pause (Retry-After).", value=gate.paused_for()
        )
        limits = gate.limits()
        yield GaugeMetricFamily(
            "ukcancel_fleet_rate_limit_per_second", "The fleet's rate limit now.", value=limits.rate_per_second
        )
        yield GaugeMetricFamily(
            "ukcancel_fleet_max_in_flight", "The fleet's concurrency cap now.", value=limits.max_in_flight
        )

    def _schedule(self) -> Iterator[Metric]:
        """The dispatch schedule: due commands, leases, and how long the oldest command has waited."""
        schedule = self.runtime.schedule
        counts = schedule.counts()
        due = GaugeMetricFamily("ukcancel_schedule_due", "Commands on the due list (retries).", labels=["when"])
        due.add_metric(["now"], counts.due_now)
        due.add_metric(["later"], counts.due_later)
        yield due
        leases = GaugeMetricFamily("ukcancel_schedule_leases", "Leases of claimed commands.", labels=["state"])
        leases.add_metric(["live"], counts.live_leases)
        leases.add_metric(["expired"], counts.expired_leases)
        yield leases
        oldest = schedule.oldest_waiting_since()
        yield GaugeMetricFamily(
            "ukcancel_oldest_waiting_seconds",
            "Age of the oldest command waiting in a user's line (0 when none waits).",
            value=max(0.0, schedule.clock() - oldest) if oldest is not None else 0.0,
        )

    def _commands_by_state(self) -> GaugeMetricFamily:
        """Commands held in Redis by state, and completed ones also by result status.

        The tally is shared by every process through ``ukcancel:metrics:commands`` for
        `cache_seconds`; one process at a time (``ukcancel:metrics:lock``) counts it anew.
        """
        connection = self.runtime.connection
        tally = self._shared_tally(connection)
        family = GaugeMetricFamily(
            "ukcancel_commands",
            "Cancel commands held in Redis by state and, once completed, by result status (-1, 0, 1, 2).",
            labels=["state", "status"],
        )
        for state in STATES:
            statuses = sorted(status for (s, status) in tally if s == state) or [""]
            for status in statuses:
                family.add_metric([state, status], tally[(state, status)])
        return family

    def _shared_tally(self, connection: Any) -> Tally[tuple[str, str]]:
        cached = connection.get(keys.METRICS_COMMANDS)
        if cached is None and (self.cache_seconds <= 0 or connection.set(
                keys.METRICS_LOCK, "1", nx=True, ex=max(5, int(self.cache_seconds) + 1))):
            tally = self._count_commands(connection)
            if self.cache_seconds > 0:
                connection.set(keys.METRICS_COMMANDS, json.dumps([[s, r, n] for (s, r), n in tally.items()]),
                               px=max(1, int(self.cache_seconds * 1000)))
                connection.delete(keys.METRICS_LOCK)
            return tally
        if cached is None:  # another process is counting: this one answers its last figures
            last = getattr(self, "_last_tally", None)
            return last if last is not None else self._count_commands(connection)
        tally = Tally({(s, r): int(n) for s, r, n in json.loads(cached)})
        self._last_tally = tally
        return tally

    def _count_commands(self, connection: Any) -> Tally[tuple[str, str]]:
        """A SCAN over the records: O(records), done once per cache period for the whole fleet."""
        tally: Tally[tuple[str, str]] = Tally()
        batch: list[bytes] = []

        def read(found: list[bytes]) -> None:
            pipe = connection.pipeline(transaction=False)
            for key in found:
                pipe.hmget(key, "state", "result")
            for state, result in pipe.execute():
                if state is None:
                    continue  # expired between SCAN and read
                tally[(as_text(state), result_status(result) or "")] += 1

        for key in connection.scan_iter(match=keys.command("*"), count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                read(batch)
                batch = []
        if batch:
            read(batch)
        self._last_tally = tally
        return tally




class _ProcessCollector(Collector):
    """This process's own metrics (the default registry), when there is no multiprocess directory."""

    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()


def process_registry(settings: Settings) -> CollectorRegistry:
    """The counters of this process, or of every process writing to PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry(auto_describe=False)
    if settings.metrics_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=settings.metrics_multiproc_dir)
    else:
        registry.register(_ProcessCollector())
    return registry


def scrape_registry(runtime: StoreParts) -> CollectorRegistry:
    """The registry one API process answers `/metrics` from: the processes' counters and the store's gauges."""
    registry = process_registry(runtime.settings)
    registry.register(StoreCollector(runtime))
    return registry


def serve_process_metrics(settings: Settings, port: int, address: str = "127.0.0.1") -> None:
    """A worker's scrape target: `process_registry` over HTTP on `port`, in a daemon thread of this process.

    Only the processes' counters: the store's gauges come from the API's /metrics, once, not once per worker.
    """
    start_http_server(port, addr=address, registry=process_registry(settings))


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

