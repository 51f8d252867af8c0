#!/usr/bin/env python3
"""Benchmarks of ukssdc-cancel against real processes on this machine.

    python ops/bench/run.py [--quick] [--only N[,N...]] [--redis-url URL]

1. API enqueue cost vs bare Celery `send_task` (same N messages, same Redis broker), over HTTP and,
   apart, in-process through `ukcancel.submission.submit` (the service's own enqueue path).
2. Rate accuracy of the fleet gate: 2 prefork workers, simulator with 20 ms latency, limit 50/s.
3. Fairness: one user's big batch, then another user's single cancel mid-way.
4. Cost per command: Redis memory per completed command, time to accept a 10,000-item batch.
5. Dispatch with default settings: recovery after SIGKILL mid-call; single and retried-single
   latency behind a withdrawn 5,000-item backlog, beside the same on an idle fleet.
6. HTTP enqueue with wrk against a hand-rolled Flask + Celery endpoint under the same gunicorn settings.
7. 1,000 concurrent long polls on one API host: gevent workers beside gthread, delay from completion.
8. UKSSDC calls per cancelled job for an "all" batch and an all_active batch, and time to finish
   against jobs / rate.
9. Idle cost: Redis commands/s, broker messages/s, log lines and worker CPU of a 2-worker fleet idle,
   paused with 1,000 waiting, and at 0.2 calls/s with 1,000 waiting.

Everything runs on 127.0.0.1 only: the API (werkzeug threaded server and `ukcancel serve`, i.e.
gunicorn with gevent workers), `ukcancel worker` processes and `ukcancel simulator` are subprocesses of this
script, each in its own process group, and are stopped on exit (also on Ctrl-C / SIGTERM).
Redis database 7 (by default) is flushed at the start and the end, and emptied between
measurements (kombu's binding keys kept); database 0 is refused. Benchmark 4 measures memory on
private redis-servers it starts: one with Redis's default configuration, one with the recommended
hash-max-listpack-value (docker-compose.yml's). Results: one table per benchmark, a summary table, and
ops/bench/results/latest.json.
See ops/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from typing import Any

from calls import bench_calls
from cost import bench_cost
from dispatch import bench_dispatch
from enqueue import bench_enqueue
from fairness import bench_fairness
from harness import DEFAULT_REDIS_URL, LOGS, RESULTS, Context, fmt, machine, serve_werkzeug, wait_for_quiet
from http_enqueue import bench_http
from idle_cost import bench_idle_cost
from long_polls import bench_long_polls
from rate import bench_rate

BENCHMARKS = {1: ("enqueue", bench_enqueue), 2: ("rate", bench_rate), 3: ("fairness", bench_fairness),
              4: ("cost", bench_cost), 5: ("dispatch", bench_dispatch),
              6: ("http", bench_http), 7: ("long polls", bench_long_polls), 8: ("calls per job", bench_calls),
              9: ("idle cost", bench_idle_cost)}


def parse_only(values: list[str] | None) -> list[int]:
    if not values:
        return sorted(BENCHMARKS)
    chosen = sorted({int(part) for value in values for part in value.split(",") if part.strip()})
    for number in chosen:
        if number not in BENCHMARKS:
            raise SystemExit(f"--only: no benchmark {number}; choose from {sorted(BENCHMARKS)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 2 minutes)")
    parser.add_argument("--only", action="append", metavar="N", help="run only benchmark N (1-9); repeat or N,M")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help=f"a Redis database of the benchmark's own, flushed (default {DEFAULT_REDIS_URL})")
    parser.add_argument("--serve-werkzeug", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_werkzeug:
        serve_werkzeug(args.serve_werkzeug)
        return 0
    if args.redis_url.rstrip("/").endswith(("/0", ":6379")):
        raise SystemExit("refusing to flush Redis database 0: give --redis-url a database of the benchmark's own")
    selected = parse_only(args.only)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicitly: a shell may start a background job with SIGINT ignored, and Ctrl-C must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    # One run at a time: two runs would reset each other's database.
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    lock = (RESULTS / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SystemExit("another ops/bench/run.py is running (ops/bench/results/.lock)") from None
    if LOGS.exists():
        shutil.rmtree(LOGS, ignore_errors=True)
    ctx = Context(args)
    began = time.time()
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "benchmarks": {}}
    status = 0
    try:
        results["machine"] = info = machine(ctx.store)
        ctx.out.table(
            "Machine", ["what", "value"],
            [["nproc", info["nproc"]], ["CPU", info["cpu_model"]], ["memory", f"{info['memory_gib']} GiB"],
             ["Python", info["python"]], ["Redis", info["redis_version"]], ["kernel", info["kernel"]],
             ["packages", ", ".join(f"{k} {v}" for k, v in info["packages"].items())],
             ["code (git)", info["code"]], ["mode", results["mode"]], ["Redis database", args.redis_url]],
        )
        ctx.store.flush()
        for number in selected:
            name, function = BENCHMARKS[number]
            quiet = wait_for_quiet(ctx, 8.0 if args.quick else 30.0)
            if quiet["foreign_cores"] >= 0.3:
                ctx.out.note(f"[yellow]benchmark {number} starts on a busy machine: other processes use "
                             f"{quiet['foreign_cores']:.2f} cores[/]")
            t0 = time.time()
            try:
                results["benchmarks"][str(number)] = {"name": name, "load_before": quiet, **function(ctx)}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # report and go on with the next benchmark
                import traceback

                status = 1
                ctx.out.note(f"[bold red]benchmark {number} ({name}) failed:[/] {exc!r}")
                traceback.print_exc()
                results["benchmarks"][str(number)] = {"name": name, "error": repr(exc)}
                ctx.summary.append([str(number), name, "error", "", "ERROR"])
            results["benchmarks"].setdefault(str(number), {})["wall_seconds"] = time.time() - t0
    except KeyboardInterrupt:
        ctx.out.note("[bold red]interrupted: stopping every process this run started[/]")
        status = 130
    finally:
        ctx.close()
    results["wall_seconds"] = time.time() - began
    results["summary"] = ctx.summary
    if ctx.summary:
        ctx.out.table(f"Summary ({results['mode']} run, {fmt(results['wall_seconds'], 0)} s)",
                      ["#", "measure", "value", "goal", "verdict"], ctx.summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    ctx.out.note(f"results: {RESULTS / 'latest.json'}  logs: {LOGS}")
    return status


if __name__ == "__main__":
    sys.exit(main())
