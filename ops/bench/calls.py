"""Benchmark 8: UKSSDC calls per cancelled job, and time to finish against jobs / rate.

Two prefork workers at the fleet limit of benchmarks 2 and 3 (50/s, simulator +20 ms) cancel one
user's jobs, each with two active products:

- an `"all"` batch of N items (1,000; quick 300), the guide's default form;
- an `all_active` batch over the same number of jobs: listOldJobs.php, a status check per job, a
  cancel per job;
- an `all_active` batch right after the user's jobs were read (`GET /v1/jobs`'s refresh): the
  expansion reuses the states read within the status TTL (10 s). The refresh reads one job after
  another, so only a refresh shorter than the TTL leaves every state reusable: this column has
  PRIMED_JOBS jobs (100), not N.

Every UKSSDC call is counted from the simulator's request log. A job counts as cancelled when its
command's result cancelled at least one product (code 0).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from harness import RATE, SIM_LATENCY_MS, Context, LoadMeter, fmt, start_workers, verdict

USER_CALLS = "bench-calls@example.org"
FIRST_JOB = 300_000
ALL_GOAL = 1.02
ALL_ACTIVE_GOAL = 2.02
TIME_GOAL = 0.95
PRIMED_JOBS = 100


def jobs_with_two_products(user: str, first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"JobID": first + i, "UserID": user, "Name": f"bench {first + i}", "DateSubmitted": "2024-11-28 12:00:00",
         "products": {"lc": 2, "psf": 3}}
        for i in range(count)
    ]


def _wait_expanded(runtime: Any, batch_id: str, timeout: float) -> bool:
    from ukcancel.batch import EXPANDING

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = runtime.batches.get(batch_id)
        if batch is not None and batch.state != EXPANDING:
            return True
        time.sleep(0.1)
    return False


def calls_run(ctx: Context, n: int, form: str, workers: list[Any], prime: bool = False) -> dict[str, Any]:
    """One batch of `form` ("all" or "all_active") over n fresh jobs; the UKSSDC's log, analysed."""
    from ukcancel import submission
    from ukcancel.batch import EXPANDING, Batch, BatchState
    from ukcancel.command import CancelCommand

    store, sim = ctx.store, ctx.simulator()
    runtime = store.runtime
    user = f"{form}-{'primed-' if prime else ''}{USER_CALLS}"
    sim.load_jobs(jobs_with_two_products(user, FIRST_JOB, n))
    primed_s = None
    if prime:  # the user's jobs read, as GET /v1/jobs has a worker do; then the batch
        began = time.time()
        runtime.jobs.request_refresh(user, runtime.dispatch.refresh_jobs)
        if not runtime.jobs.wait_refreshed(user, n / RATE * 3 + 60):
            raise RuntimeError("the jobs refresh did not finish")
        primed_s = time.time() - began
    sim.clear_log()
    meter = LoadMeter(store, [w.pgid for w in workers] + [sim.child.pgid])
    submitted = time.time()
    if form == "all":
        commands = [CancelCommand(job_id=FIRST_JOB + i, user_id=user, products="all", submitted_by="bench-calls")
                    for i in range(n)]
        batch = submission.enqueue_batch(runtime, Batch(user, "bench-calls", state=BatchState.RUNNING), commands)
        ids = [c.id for c in commands]
    else:
        batch = submission.start_expansion(runtime, Batch(user, "bench-calls", state=EXPANDING))
        if not _wait_expanded(runtime, batch.id, n / RATE * 3 + 60):
            raise RuntimeError("the all_active batch did not finish expanding")
        ids = runtime.batches.command_ids(batch.id)
    done, _ = store.wait_terminal(ids, timeout=n / RATE * 3 + 60)
    load = meter.stop()
    log = sim.log()
    records = [r for r in runtime.registry.get_many(ids) if r is not None]
    cancelled = sum(1 for r in records if r.result and r.result[0] in (1, 2)
                    and any(entry.get("code") == 0 for entry in r.result[1].values()))
    finished = max((entry["at"] for r in records for entry in r.history if entry["state"] == "completed"),
                   default=float("nan"))
    calls = Counter(str(e["endpoint"]).rsplit("/", 1)[-1] for e in log)
    total = sum(calls.values())
    elapsed = finished - submitted
    return {
        "form": form, "primed": prime, "jobs": n, "commands": len(ids), "terminal": done, "cancelled_jobs": cancelled,
        "calls": dict(calls), "calls_total": total,
        "calls_per_cancelled_job": total / cancelled if cancelled else float("nan"),
        "submit_to_last_completion_s": elapsed,
        "floor_jobs_over_rate_s": n / RATE, "floor_calls_over_rate_s": total / RATE,
        "limit_over_time_jobs": (n / RATE) / elapsed if elapsed > 0 else float("nan"),
        "limit_over_time_calls": (total / RATE) / elapsed if elapsed > 0 else float("nan"),
        "refresh_before_s": primed_s, "load": load,
    }


def bench_calls(ctx: Context) -> dict[str, Any]:
    n = 300 if ctx.quick else 1000
    store, sim = ctx.store, ctx.simulator()
    store.reset()
    sim.set_latency(SIM_LATENCY_MS)
    workers = start_workers(ctx.children, store.url, sim, 2, "calls")
    try:
        runs = [calls_run(ctx, n, "all", workers), calls_run(ctx, n, "all_active", workers),
                calls_run(ctx, min(n, PRIMED_JOBS), "all_active", workers, prime=True)]
    finally:
        ctx.children.stop_many(workers)
        store.reset()
    all_run, active_run, primed_run = runs
    out: dict[str, Any] = {"limit_per_second": RATE, "latency_ms": SIM_LATENCY_MS,
                           "workers": "2 x prefork concurrency 8", "runs": runs}
    out["goal_all_calls_met"] = all_run["calls_per_cancelled_job"] <= ALL_GOAL
    out["goal_all_time_met"] = all_run["limit_over_time_jobs"] >= TIME_GOAL
    out["goal_all_active_calls_met"] = active_run["calls_per_cancelled_job"] <= ALL_ACTIVE_GOAL
    out["goal_all_active_time_met"] = active_run["limit_over_time_calls"] >= TIME_GOAL

    def calls_text(r: dict[str, Any]) -> str:
        return ", ".join(f"{name} {count:,}" for name, count in sorted(r["calls"].items()))

    heads = [f'"all" batch, N={n:,}', f"all_active, N={n:,} jobs",
             f"all_active after GET /v1/jobs, N={primed_run['jobs']:,} (not judged)"]
    rows = [
        ["jobs cancelled / commands terminal", *[f"{r['cancelled_jobs']:,} / {r['terminal']:,}" for r in runs],
         "all", verdict(all(r["cancelled_jobs"] == r["jobs"] for r in runs))],
        ["UKSSDC calls by endpoint", *[calls_text(r) for r in runs], "", ""],
        ["UKSSDC calls per cancelled job", *[fmt(r["calls_per_cancelled_job"], 3) for r in runs],
         f"<= {ALL_GOAL} / <= {ALL_ACTIVE_GOAL}",
         verdict(out["goal_all_calls_met"] and out["goal_all_active_calls_met"])],
        ["submit -> last completion (s)", *[fmt(r["submit_to_last_completion_s"], 2) for r in runs], "", ""],
        ["jobs / rate (s)", *[fmt(r["floor_jobs_over_rate_s"], 2) for r in runs], "", ""],
        ["(jobs / rate) / time", *[fmt(r["limit_over_time_jobs"], 3) for r in runs],
         f'>= {TIME_GOAL} ("all")', verdict(out["goal_all_time_met"])],
        ["(calls / rate) / time", *[fmt(r["limit_over_time_calls"], 3) for r in runs],
         f">= {TIME_GOAL} (all_active)", verdict(out["goal_all_active_time_met"])],
        ["jobs refresh before the batch (s)", "-", "-", fmt(primed_run["refresh_before_s"] or 0, 2), "", ""],
        ["other processes' CPU meanwhile (cores)", *[fmt(r["load"]["foreign_cores"], 2) for r in runs], "", ""],
    ]
    ctx.out.table(
        f"8. UKSSDC calls per cancelled job: limit {RATE:g}/s, simulator +{SIM_LATENCY_MS} ms, 2 workers (prefork x8)",
        ["measure", *heads, "goal", "verdict"], rows,
        caption="Calls counted from the simulator's request log, per job whose result cancelled a product. "
                "Time from the batch's submission (in-process, one pipeline) to the last command's completion in "
                'its record. "all" is judged against jobs / rate (one canceljob.php a job is the floor); all_active '
                "against calls / rate (a status check and a cancel a job). The third column's batch follows a "
                "refresh of the user's jobs: the states it read are reused within UKCANCEL_JOB_STATUS_TTL_SECONDS "
                f"(10 s), so it has {PRIMED_JOBS} jobs, few enough for the refresh to read them all within the TTL.",
    )
    ctx.summary.append(["8", '"all": UKSSDC calls per cancelled job', fmt(all_run["calls_per_cancelled_job"], 3),
                        f"<= {ALL_GOAL}", verdict(out["goal_all_calls_met"])])
    ctx.summary.append(["8", '"all": (jobs / rate) / time', fmt(all_run["limit_over_time_jobs"], 3),
                        f">= {TIME_GOAL}", verdict(out["goal_all_time_met"])])
    ctx.summary.append(["8", "all_active: UKSSDC calls per cancelled job",
                        fmt(active_run["calls_per_cancelled_job"], 3), f"<= {ALL_ACTIVE_GOAL}",
                        verdict(out["goal_all_active_calls_met"])])
    ctx.summary.append(["8", "all_active: (calls / rate) / time", fmt(active_run["limit_over_time_calls"], 3),
                        f">= {TIME_GOAL}", verdict(out["goal_all_active_time_met"])])
    return out
