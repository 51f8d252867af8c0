"""The benchmarks' harness: child processes, the parts (simulator, API, workers, private Redis), the
HTTP client helpers, the Redis store, CPU and load meters, output, and the run's context.

The benchmark modules (enqueue, rate, fairness, cost) import what they need from here; run.py is
the entry point. The process helpers that the tests' fixtures use too are in processes.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from processes import (
    clean_environment,
    free_port,
    kill_group,
    redis_answers,
    redis_server_argv,
    signal_group,
    start_in_own_group,
    stop_group,
    wait_for_workers,
    wait_until,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
LOGS = RESULTS / "logs"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
UKCANCEL = Path(sys.executable).with_name("ukcancel")

# The API's own request rate limit (if one is configured by the time this runs) must not throttle
# a throughput benchmark; the benchmark measures the enqueue path, not the limiter.
API_ENV = {"UKCANCEL_API_RATE_LIMIT": "100000000 per minute"}

USER_API = "bench-api@example.org"
USER_RATE = "bench-rate@example.org"
USER_BATCH = "bench-batch@example.org"
USER_SINGLE = "bench-single@example.org"
USER_MEM = "bench-mem@example.org"

RATE = 50.0  # fleet limit of benchmarks 2 and 3 (calls per second)
IN_FLIGHT = 16
SIM_LATENCY_MS = 20
CLIENT_THREADS = 8



# ------------------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------------------
@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # started with start_new_session: its own process group

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None


class Children:
    """Every process this script starts; each is stopped by its own process-group id."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        LOGS.mkdir(parents=True, exist_ok=True)
        log_path = LOGS / f"{name}.log"
        child = Child(name, start_in_own_group(argv, env, log_path, cwd=ROOT), log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 12.0) -> None:
        stop_group(child.process, timeout)
        # Children of the group that outlived their parent (a prefork pool) go too.
        if group_pids(child.pgid):
            signal_group(child.process, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def stop_many(self, children: list[Child], timeout: float = 12.0) -> None:
        """SIGTERM them all at once, then wait (warm shutdowns run in parallel)."""
        for child in children:
            if child.alive():
                signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(child.process)
        for child in children:
            self.stop(child, timeout=1)

    def stop_all(self) -> None:
        self.stop_many(list(self.children), timeout=10)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                pids.append(pid)
        except ProcessLookupError:
            continue
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process in the group (and of children they reaped)."""
    total = 0.0
    for pid in group_pids(pgid):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def pid_cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """Busy CPU seconds of all CPUs since boot: user, nice, system, irq, softirq and steal (not
    idle, iowait, or guest time, which the kernel already counts in user and nice)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


class LoadMeter:
    """How busy the machine was over an interval, and how much of that was not this benchmark.

    ours = this process + the given process groups (+ redis-server's own CPU, which may include
    other tenants of the shared server); foreign = everything else (e.g. other engineers' tests).
    """

    def __init__(self, store: Store | None, groups: list[int]) -> None:
        self.store, self.groups = store, groups
        self.wall = time.monotonic()
        self.busy = machine_busy_seconds()
        self.own = own_cpu_seconds()
        self.group_cpu = {g: group_cpu_seconds(g) for g in groups}
        self.redis = store.redis_cpu() if store else 0.0

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        busy_s = machine_busy_seconds() - self.busy
        ours = own_cpu_seconds() - self.own
        ours += sum(group_cpu_seconds(g) - c for g, c in self.group_cpu.items())
        ours += (self.store.redis_cpu() - self.redis) if self.store else 0.0
        return {"seconds": wall, "busy_cores": busy_s / wall, "ours_cores": ours / wall,
                "foreign_cores": max(0.0, busy_s - ours) / wall}


def wait_for_quiet(ctx: Context, max_wait: float) -> dict[str, float]:
    """Wait (bounded) until processes other than ours use < 0.3 cores over a 1 s sample."""
    deadline = time.monotonic() + max_wait
    groups = [c.pgid for c in ctx.children.children]
    while True:
        meter = LoadMeter(ctx.store, groups)
        time.sleep(1.0)
        load = meter.stop()
        if load["foreign_cores"] < 0.3 or time.monotonic() >= deadline:
            load["waited_for_quiet"] = max_wait - max(0.0, deadline - time.monotonic())
            return load
        ctx.out.note(f"  (machine busy with other processes: {load['foreign_cores']:.2f} cores; waiting for quiet)")
        time.sleep(2.0)


def ukcancel_argv(*args: str) -> list[str]:
    if UKCANCEL.exists():
        return [str(UKCANCEL), *args]
    return [sys.executable, "-c", "import sys; from ukcancel.cli import main; sys.exit(main())", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = clean_environment()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------
# The parts: simulator, API, workers
# ------------------------------------------------------------------------------------------------
class Simulator:
    """`ukcancel simulator` in its own process, driven through its /_sim/ control endpoints."""

    def __init__(self, children: Children) -> None:
        import requests

        self.children = children
        self.child = children.start("simulator", ukcancel_argv("simulator", "--port", "0"), child_env())
        deadline = time.monotonic() + 20
        self.base_url = ""
        while time.monotonic() < deadline:
            text = self.child.log()
            if "listening on " in text:
                self.base_url = text.split("listening on ", 1)[1].split()[0].rstrip("/")
                break
            if not self.child.alive():
                raise RuntimeError(f"simulator exited:\n{text}")
            time.sleep(0.05)
        if not self.base_url:
            raise RuntimeError("simulator did not start")
        self.http = requests.Session()

    def _control(self, method: str, name: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.base_url}/_sim/{name}", json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def load_jobs(self, jobs: list[dict[str, Any]]) -> None:
        self._control("POST", "jobs", {"jobs": jobs})

    def set_latency(self, ms: float) -> None:
        self._control("POST", "latency", {"ms": ms})

    def clear_log(self) -> None:
        self._control("DELETE", "log")

    def log(self) -> list[dict[str, Any]]:
        return self._control("GET", "log")


def jobs_for(user: str, first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"JobID": first + i, "UserID": user, "Name": f"bench {first + i}", "DateSubmitted": "2024-11-28 12:00:00",
         "products": {"lc": 2}}
        for i in range(count)
    ]


class Api:
    """The HTTP API in a subprocess: `werkzeug` (one process, threaded) or `gunicorn` (`ukcancel serve`)."""

    def __init__(self, children: Children, kind: str, redis_url: str, workers: int = 2) -> None:
        self.kind = kind
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = child_env(REDIS_URL=redis_url, **API_ENV)
        if kind == "werkzeug":
            argv = [sys.executable, str(HERE / "run.py"), "--serve-werkzeug", str(self.port)]
            self.label = "werkzeug threaded server, 1 process (HTTP/1.1 keep-alive)"
        else:
            argv = ukcancel_argv("serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers))
            # As `ukcancel serve` starts it (ukcancel.cli.gunicorn_server): gevent workers, one log line a request.
            self.label = f"`ukcancel serve`: gunicorn, {workers} gevent workers, the app's request log"
        self.workers = workers if kind == "gunicorn" else 1
        self.children = children
        self.child = children.start(f"api-{kind}", argv, env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import requests

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"API ({self.kind}) exited:\n{self.child.log()}")
            try:
                if requests.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    if self.kind != "gunicorn" or self.child.log().count("Booting worker") >= self.workers:
                        return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API ({self.kind}) not ready:\n{self.child.log()}")

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.child.pgid)

    def stop(self) -> None:
        self.children.stop(self.child)


def start_workers(children: Children, redis_url: str, sim: Simulator, count: int, tag: str,
                  limits_window: bool = False, **extra: str) -> list[Child]:
    """`count` prefork workers; with `limits_window`, workers whose gate uses the `limits` library's
    moving window instead of its own (ops/bench/limits_worker.py), for benchmark 2's comparison."""
    env = child_env(
        REDIS_URL=redis_url,
        UKSSDC_BASE_URL=sim.base_url,
        UKCANCEL_FLEET_RATE_PER_SECOND=str(extra.pop("rate", RATE)),
        UKCANCEL_FLEET_MAX_IN_FLIGHT=str(extra.pop("in_flight", IN_FLIGHT)),
        UKCANCEL_UKSSDC_TIMEOUT_SECONDS="10",
        **extra,
    )
    started = []
    for i in range(count):
        name = f"{tag}{i + 1}"
        args = ("worker", "--pool=prefork", "--concurrency=8", f"--hostname={name}@%h")
        argv = [sys.executable, str(HERE / "limits_worker.py"), *args] if limits_window \
            else ukcancel_argv(*args)
        started.append(children.start(f"worker-{name}", argv, env))
    wait_for_workers(redis_url, {f"{tag}{i + 1}": (c.process, c.log_path) for i, c in enumerate(started)}, 60)
    return started


def private_redis(children: Children, extra_args: list[str] | None = None,
                  name: str = "redis-private") -> tuple[Child, str] | None:
    """A redis-server of this benchmark's own (no persistence), so INFO used_memory is not moved by
    other tenants of the shared server; None when the binary is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    child = children.start(name, redis_server_argv(binary, port, *(extra_args or [])), child_env())
    url = f"redis://127.0.0.1:{port}/7"
    if wait_until(lambda: redis_answers(url, connect_timeout=0.5), 10):
        return child, url
    children.stop(child)
    return None


# ------------------------------------------------------------------------------------------------
# HTTP client helpers
# ------------------------------------------------------------------------------------------------
def timed_threads(work: Callable[[Any, Callable[[], Any]], None], chunks: list[Any]) -> float:
    """Run `work(chunk, ready)` on one thread per chunk; each calls `ready()` once it is set up
    (connection opened), so all start together. Seconds from that start until the last finishes."""
    barrier = threading.Barrier(len(chunks) + 1)
    pool = [threading.Thread(target=work, args=(chunk, barrier.wait), daemon=True) for chunk in chunks]
    for thread in pool:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in pool:
        thread.join()
    return time.perf_counter() - began


def shares(total: int, threads: int) -> list[int]:
    """`total` split as evenly as possible over `threads`."""
    return [total // threads + (1 if i < total % threads else 0) for i in range(threads)]


def post_cancellations(base_url: str, token: str, job_ids: list[int], threads: int = CLIENT_THREADS,
                       products: list[str] | None = None, client: str = "requests",
                       ) -> tuple[float, Counter[int], list[str]]:
    """POST one cancel per job id from `threads` keep-alive connections; (seconds, statuses, ids).

    `client` "requests": a requests.Session per thread (what a Python caller would use);
    "http.client": the standard library's bare HTTPConnection, to show the server without most
    of the client's CPU cost on this 2-core machine.
    """
    import http.client
    from urllib.parse import urlsplit

    import requests

    products = products or ["lc"]
    chunks = [job_ids[i::threads] for i in range(threads)]
    statuses: Counter[int] = Counter()
    ids: list[str] = []
    lock = threading.Lock()
    url = base_url + "/v1/cancellations"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    netloc = urlsplit(base_url)

    def run(chunk: list[int], ready: Callable[[], Any]) -> None:
        mine: Counter[int] = Counter()
        got: list[str] = []
        if client == "http.client":
            connection = http.client.HTTPConnection(netloc.hostname, netloc.port, timeout=30)
            ready()
            for job_id in chunk:
                body = json.dumps({"job_id": job_id, "products": products})
                connection.request("POST", "/v1/cancellations", body, headers)
                response = connection.getresponse()
                payload = response.read()
                mine[response.status] += 1
                if response.status == 202:
                    got.append(json.loads(payload)["id"])
            connection.close()
        else:
            session = requests.Session()
            ready()
            for job_id in chunk:
                body = json.dumps({"job_id": job_id, "products": products})
                reply = session.post(url, data=body, headers=headers, timeout=30)
                mine[reply.status_code] += 1
                if reply.status_code == 202:
                    got.append(reply.json()["id"])
            session.close()
        with lock:
            statuses.update(mine)
            ids.extend(got)

    return timed_threads(run, chunks), statuses, ids


def get_many(base_url: str, path: str, count: int, threads: int = CLIENT_THREADS) -> tuple[float, Counter[int]]:
    """GET `path` `count` times from `threads` keep-alive requests sessions; (seconds, statuses)."""
    import requests

    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def run(n: int, ready: Callable[[], Any]) -> None:
        session = requests.Session()
        mine: Counter[int] = Counter()
        ready()
        for _ in range(n):
            mine[session.get(base_url + path, timeout=30).status_code] += 1
        session.close()
        with lock:
            statuses.update(mine)

    return timed_threads(run, shares(count, threads)), statuses


def post_batch(base_url: str, token: str, job_ids: list[int]) -> tuple[float, int, Any]:
    """POST /v1/batches; (seconds, status, parsed body or text)."""
    import requests

    body = json.dumps({"items": [{"job_id": j, "products": ["lc"]} for j in job_ids]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    began = time.perf_counter()
    response = requests.post(base_url + "/v1/batches", data=body, headers=headers, timeout=120)
    elapsed = time.perf_counter() - began
    try:
        payload = response.json()
    except ValueError:
        payload = response.text[:300]
    return elapsed, response.status_code, payload



# ------------------------------------------------------------------------------------------------
# Redis helpers
# ------------------------------------------------------------------------------------------------
class Store:
    def __init__(self, redis_url: str) -> None:
        from ukcancel.assemble import create_runtime
        from ukcancel.settings import Settings

        self.url = redis_url
        self.runtime = create_runtime(Settings(redis_url=redis_url))
        self.redis = self.runtime.connection

    def flush(self) -> None:
        """FLUSHDB: only at the start and the end of a run, when no producer has declared anything."""
        self.redis.flushdb()

    def reset(self) -> None:
        """Delete every key but kombu's exchange bindings, which producers declare once and cache
        (a FLUSHDB between measurements would make later messages unroutable)."""
        doomed: list[bytes] = []
        for key in self.redis.scan_iter(count=2000):
            if not key.startswith(b"_kombu.binding."):
                doomed.append(key)
            if len(doomed) >= 2000:
                self.redis.unlink(*doomed)
                doomed = []
        if doomed:
            self.redis.unlink(*doomed)

    def token(self, user: str, name: str) -> str:
        token, _ = self.runtime.tokens.create(user, name=name)
        return token

    def wait_terminal(self, ids: list[str], timeout: float, progress: Any = None) -> tuple[int, float]:
        """Poll states until every id is terminal or `timeout`; (terminal count, seconds waited)."""
        from ukcancel import keys

        remaining = list(ids)
        began = time.monotonic()
        while remaining and time.monotonic() - began < timeout:
            pipe = self.redis.pipeline(transaction=False)
            for cid in remaining:
                pipe.hget(keys.command(cid), "state")
            states = pipe.execute()
            remaining = [cid for cid, s in zip(remaining, states) if s not in (b"completed", b"aborted")]
            if progress is not None:
                progress(len(ids) - len(remaining))
            if remaining:
                time.sleep(0.25)
        return len(ids) - len(remaining), time.monotonic() - began

    def redis_cpu(self) -> float:
        info = self.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def used_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def memory_parts(self) -> dict[str, int]:
        """MEMORY STATS, condensed: total allocated, dataset, keyspace dicts of our database, client
        buffers (transient: query/output buffers after big pipelines) and Lua caches."""
        stats = self.redis.memory_stats()
        db = stats.get(f"db.{self.redis.connection_pool.connection_kwargs.get('db', 0)}") or {}
        return {
            "total": int(stats["total.allocated"]),
            "dataset": int(stats["dataset.bytes"]),
            "keyspace_dicts": int(db.get("overhead.hashtable.main", 0)) + int(db.get("overhead.hashtable.expires", 0)),
            "clients": int(stats.get("clients.normal", 0)) + int(stats.get("clients.slaves", 0)),
            "lua": int(stats.get("lua.caches", 0)) + int(stats.get("functions.caches", 0)),
        }

    def settled_memory(self) -> dict[str, int]:
        """memory_parts once client buffers have been trimmed by the server (bounded wait)."""
        parts = self.memory_parts()
        for _ in range(10):
            time.sleep(0.3)
            again = self.memory_parts()
            if again["clients"] >= parts["clients"] and abs(again["total"] - parts["total"]) < 4096:
                return again
            parts = again
        return parts

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
class Output:
    def __init__(self) -> None:
        from rich.console import Console

        width = None if sys.stdout.isatty() else 160
        self.console = Console(width=width, highlight=False)

    def note(self, text: str) -> None:
        self.console.print(text)

    def table(self, title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> None:
        from rich import box
        from rich.table import Table

        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAVY, title_justify="left",
                      caption_justify="left")
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right", overflow="fold", no_wrap=(i == 0))
        for row in rows:
            table.add_row(*[str(cell) for cell in row])
        self.console.print(table)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# ------------------------------------------------------------------------------------------------
# The run's context, the machine, the werkzeug API server
# ------------------------------------------------------------------------------------------------
class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.children = Children()
        self.out = Output()
        self.summary: list[list[str]] = []
        self.store = Store(args.redis_url)
        self._simulator: Simulator | None = None
        self.redis_config = {k: v for k, v in self.store.redis.config_get("hash-max-listpack-*").items()}

    def simulator(self) -> Simulator:
        if self._simulator is None:
            self._simulator = Simulator(self.children)
        return self._simulator

    def close(self) -> None:
        self.children.stop_all()
        try:
            self.store.flush()
        except Exception:
            pass
        self.store.close()


def machine(store: Store) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = round(psutil.virtual_memory().total / 1024**3, 1)
    from importlib.metadata import version

    versions = {}
    for name in ("celery", "kombu", "redis", "flask", "gunicorn", "werkzeug", "limits", "requests"):
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = "?"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.splitlines()
        code = f"{head}" + (f" + uncommitted changes ({len(dirty)} paths)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        code = "unknown"
    return {
        "code": code, "nproc": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem_gib, "python": platform.python_version(),
        "redis_version": store.redis.info("server")["redis_version"], "kernel": platform.release(),
        "packages": versions,
    }


def serve_werkzeug(port: int) -> None:
    """Internal: the API in a werkzeug threaded server with HTTP/1.1 keep-alive, no request log."""
    import logging

    from werkzeug.serving import WSGIRequestHandler, make_server

    from ukcancel.assemble import create_api

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    WSGIRequestHandler.protocol_version = "HTTP/1.1"
    app = create_api()
    server = make_server("127.0.0.1", port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"werkzeug API listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()
