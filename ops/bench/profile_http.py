#!/usr/bin/env python3
"""Where an API request's time goes: pyinstrument inside `ukcancel serve`'s gunicorn workers, loaded by wrk.

    .venv/bin/python ops/bench/profile_http.py [--seconds 8] [--redis-url redis://127.0.0.1:6379/6]

The API runs as `ukcancel serve` runs it (gunicorn, gevent, 2 workers, 2,000 connections each,
access log on stdout), with the benchmark's raised rate limit; each worker runs under pyinstrument
from its start (`post_worker_init`) to its end (`worker_exit`), so the profile covers every
greenlet: the requests and the gevent hub waiting for them. wrk (2 threads x 16 connections, as
benchmark 6) loads `GET /healthz`, then, on a fresh server, `POST /v1/cancellations` (post.lua).

Per request kind it writes ops/bench/results/profile/{healthz,post}-{pid}.txt (pyinstrument's
tree) and -flat.txt (self time per function), and prints the top functions by self time and the
request rate. pyinstrument needs installing in the virtualenv (`.venv/bin/pip install pyinstrument`);
it is not a dependency of the project. The Redis database given is flushed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import API_ENV, USER_API, child_env  # noqa: E402
from processes import free_port, start_in_own_group, stop_group  # noqa: E402

OUT = HERE / "results" / "profile"
WRK = ["-t2", "-c16"]
# The options of `ukcancel serve` (ukcancel/cli/gunicorn_server.py), plus the profiling hooks.
SERVE = {"worker_class": "gevent", "workers": 2, "worker_connections": 2000, "timeout": 90, "accesslog": "-"}


# -- inside the server process -------------------------------------------------------------------
def serve(port: int, kind: str) -> None:
    from gunicorn.app.base import BaseApplication
    from pyinstrument import Profiler

    profilers: dict[int, Profiler] = {}

    def post_worker_init(worker: object) -> None:
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        profilers[os.getpid()] = profiler

    def worker_exit(server: object, worker: object) -> None:
        profiler = profilers.pop(os.getpid(), None)
        if profiler is None:
            return
        session = profiler.stop()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{kind}-{os.getpid()}.txt").write_text(profiler.output_text(show_all=False))
        (OUT / f"{kind}-{os.getpid()}-flat.txt").write_text(profiler.output_text(flat=True))
        del session

    class Profiled(BaseApplication):
        def load_config(self) -> None:
            for key, value in {**SERVE, "bind": f"127.0.0.1:{port}", "post_worker_init": post_worker_init,
                               "worker_exit": worker_exit}.items():
                self.cfg.set(key, value)

        def load(self) -> object:
            from ukcancel.wsgi import app

            return app

    Profiled().run()


# -- the driver ------------------------------------------------------------------------------------
def run_wrk(url: str, seconds: int, token: str = "", script: bool = False) -> str:
    argv = ["wrk", *WRK, f"-d{seconds}s"]
    if script:
        argv += ["-s", str(HERE / "post.lua")]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30,
                          env={**child_env(), "WRK_TOKEN": token})
    return done.stdout


def profile(kind: str, redis_url: str, seconds: int, token: str) -> float:
    import requests

    port = free_port()
    log = OUT / f"{kind}-server.log"
    env = child_env(REDIS_URL=redis_url, **API_ENV)
    process = start_in_own_group([sys.executable, __file__, "--serve", str(port), "--kind", kind], env, log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        time.sleep(1.0)  # both workers booted
        if kind == "healthz":
            text = run_wrk(f"http://127.0.0.1:{port}/healthz", seconds)
        else:
            text = run_wrk(f"http://127.0.0.1:{port}", seconds, token, script=True)
    finally:
        stop_group(process, 20)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non_2xx:
        print(f"{kind}: {non_2xx.group(1)} non-2xx answers")
    return float(rate.group(1)) if rate else float("nan")


def top_self(path: Path, count: int = 15) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if re.match(r"^\s*[\d.]+\s", line)]
    return lines[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.kind)
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    if args.redis_url.rstrip("/").endswith(("/0", ":6379")):
        raise SystemExit("refusing to flush Redis database 0")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
            rate = profile(kind, args.redis_url, args.seconds, token)
            print(f"\n== {kind}: {rate:,.0f} requests/s under the profiler (wrk {' '.join(WRK)}, {args.seconds} s)")
            for flat in sorted(OUT.glob(f"{kind}-*-flat.txt"))[:1]:
                print(f"   top self time, {flat.name}:")
                for line in top_self(flat):
                    print("   " + line)
    finally:
        runtime.connection.flushdb()
    print(f"\nprofiles: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
