#!/usr/bin/env python3
"""Where an API request's CPU goes: py-spy on `ukcancel serve`'s gunicorn workers while wrk loads them.

    .venv/bin/pip install py-spy      # a sampling profiler; not a dependency of the project
    .venv/bin/python ops/bench/profile_http.py [--seconds 8] [--redis-url redis://127.0.0.1:6379/6]

The API is started exactly as shipped (`ukcancel serve --workers 2`: gunicorn, gevent, 2,000
connections per worker, access log on stdout) with the benchmark's raised rate limit. wrk (2
threads x 16 connections, as benchmark 6) loads `GET /healthz`, then `POST /v1/cancellations`
(post.lua, a new JobID per request), while `py-spy record --subprocesses --nonblocking` samples both
workers from outside. Only samples on the CPU count (py-spy leaves idle ones out), so a gevent
worker waiting in its hub costs nothing, and the process is not slowed by an in-process profiler
(pyinstrument's per-call hook measures wall time, which under gevent is mostly the hub's waits,
and it slowed `/healthz` from thousands to ~300 requests/s).

It prints, per request kind, the requests/s, CPU microseconds per request (samples / rate), the
top functions by self time and the share of a few named parts (request log, metrics, rate limit,
authentication, the enqueue), and writes the folded stacks to ops/bench/results/profile/. The
Redis database given is flushed at the start and the end.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import API_ENV, USER_API, child_env, ukcancel_argv  # noqa: E402
from processes import free_port, start_in_own_group, stop_group  # noqa: E402

OUT = HERE / "results" / "profile"
WRK = ["-t2", "-c16"]
RATE_HZ = 500
# Inclusive share of these, matched on "function (file" of a frame.
PARTS = {
    "request log (service/request_log.py)": "request_log.py",
    "metrics (service/http_metrics.py)": "service/http_metrics.py",
    "rate limit (flask_limiter)": "flask_limiter/",
    "authentication (service/auth.py)": "service/auth.py",
    "enqueue (ukcancel/submission.py)": "submission.py",
    "gunicorn access log (glogging)": "glogging.py",
    "redis client (redis/)": "/redis/",
    "flask dispatch (flask/app.py)": "flask/app.py",
    "gunicorn + gevent (handle, parse, send)": "gunicorn/",
}


def run_wrk(url: str, seconds: int, token: str = "", script: bool = False) -> str:
    argv = ["wrk", *WRK, f"-d{seconds}s"]
    if script:
        argv += ["-s", str(HERE / "post.lua")]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30,
                          env={**child_env(), "WRK_TOKEN": token})
    return done.stdout


def profile(kind: str, redis_url: str, seconds: int, token: str) -> dict[str, object]:
    import requests

    port = free_port()
    env = child_env(REDIS_URL=redis_url, **API_ENV)
    argv = ukcancel_argv("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2")
    server = start_in_own_group(argv, env, OUT / f"{kind}-server.log")
    folded = OUT / f"{kind}.folded"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200 and \
                        (OUT / f"{kind}-server.log").read_text().count("Booting worker") >= 2:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        spy = subprocess.Popen(
            [shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy", "record", "--pid",
             str(server.pid), "--subprocesses", "--nonblocking", "--rate", str(RATE_HZ), "--duration",
             str(seconds), "--format", "raw", "--output", str(folded)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}" + ("/healthz" if kind == "healthz" else "")
        text = run_wrk(url, seconds - 1, token, script=kind == "post")
        spy.wait(seconds + 30)
    finally:
        stop_group(server, 20)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"per_second": float(rate.group(1)) if rate else float("nan"),
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, "folded": folded, "seconds": seconds - 1}


def analyse(folded: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(on-CPU samples, self samples per function, inclusive samples per named part)."""
    total, own, parts = 0, Counter(), Counter()
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[re.sub(r":\d+\)$", ")", frames[-1])] += count
        for name, marker in PARTS.items():
            if any(marker in frame for frame in frames):
                parts[name] += count
    return total, own, parts


def in_process(redis_url: str, count: int) -> None:
    """The Flask app alone, called in this process one request at a time (no server, no gevent):
    CPU and wall microseconds per request, and a pyinstrument profile of the same calls (which,
    without gevent, attributes time correctly)."""
    from pyinstrument import Profiler
    from werkzeug.test import EnvironBuilder

    from ukcancel.assemble import create_api, create_runtime
    from ukcancel.settings import Settings

    runtime = create_runtime(Settings(redis_url=redis_url, api_rate_limit=API_ENV["UKCANCEL_API_RATE_LIMIT"]))
    runtime.connection.flushdb()
    app = create_api(runtime=runtime)
    token, _ = runtime.tokens.create(USER_API, name="bench-inproc")
    auth = {"Authorization": f"Bearer {token}"}
    jobs = iter(range(10_000_000, 20_000_000))

    def environ(kind: str) -> dict[str, object]:
        if kind == "healthz":
            return EnvironBuilder(path="/healthz").get_environ()
        return EnvironBuilder(path="/v1/cancellations", method="POST", headers=auth,
                              json={"job_id": next(jobs), "products": ["lc"]}).get_environ()

    statuses: Counter[str] = Counter()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        statuses[status.split()[0]] += 1

    def call_all(environs: list[dict[str, object]]) -> None:
        for env in environs:
            body = app(env, start_response)
            for _ in body:
                pass
            getattr(body, "close", lambda: None)()

    # Redis round trips: every command or pipeline the client sends (one send per round trip).
    import redis.connection

    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: object, *args: object, **kwargs: object) -> None:
        sent[0] += 1
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        for kind in ("healthz", "post"):
            call_all([environ(kind) for _ in range(50)])  # warm up
            sent[0] = 0
            call_all([environ(kind) for _ in range(100)])
            trips = sent[0] / 100
            environs = [environ(kind) for _ in range(count)]
            wall, cpu = time.perf_counter(), time.process_time()
            call_all(environs)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            environs = [environ(kind) for _ in range(count)]
            profiler.start()
            call_all(environs)
            profiler.stop()
            (OUT / f"inproc-{kind}.txt").write_text(profiler.output_text(show_all=False))
            flat = profiler.output_text(flat=True)
            (OUT / f"inproc-{kind}-flat.txt").write_text(flat)
            print(f"\n== in process, {kind}: {1e6 * cpu / count:,.0f} us CPU, {1e6 * wall / count:,.0f} us wall "
                  f"per request ({count} requests; statuses {dict(statuses)}); "
                  f"{trips:.2f} Redis round trips per request")
            statuses.clear()
            print("   top self time (pyinstrument, flat):")
            for line in [ln for ln in flat.splitlines() if re.match(r"^\s*[\d.]+\s", ln)][:12]:
                print("   " + line.strip())
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        runtime.connection.flushdb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--in-process", type=int, metavar="N", help="only the in-process measure, N requests each")
    args = parser.parse_args()
    if args.in_process:
        OUT.mkdir(parents=True, exist_ok=True)
        in_process(args.redis_url, args.in_process)
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None and shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    if args.redis_url.rstrip("/").endswith(("/0", ":6379")):
        raise SystemExit("refusing to flush Redis database 0")
    from ukcancel.assemble import create_runtime
    from ukcancel.settings import Settings

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    runtime = create_runtime(Settings(redis_url=args.redis_url))
    runtime.connection.flushdb()
    try:
        token, _ = runtime.tokens.create(USER_API, name="bench-profile")
        for kind in ("healthz", "post"):
            run = profile(kind, args.redis_url, args.seconds, token)
            total, own, parts = analyse(run["folded"])  # type: ignore[arg-type]
            requests_made = run["per_second"] * run["seconds"]  # type: ignore[operator]
            us = 1e6 * total / RATE_HZ / requests_made if requests_made else float("nan")
            print(f"\n== {kind}: {run['per_second']:,.0f} requests/s (wrk {' '.join(WRK)}), "
                  f"{run['non_2xx']} non-2xx; {total} on-CPU samples at {RATE_HZ} Hz in 2 workers: "
                  f"{us:,.0f} us of worker CPU per request")
            print("   share of worker CPU (inclusive):")
            for name, count in parts.most_common():
                print(f"   {100 * count / total:5.1f}%  {name}")
            print("   top functions by self time:")
            for frame, count in own.most_common(15):
                print(f"   {100 * count / total:5.1f}%  {frame}")
    finally:
        runtime.connection.flushdb()
    print(f"\nfolded stacks: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
