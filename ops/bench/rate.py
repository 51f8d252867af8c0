"""Benchmark 2: rate accuracy of the fleet gate (2 prefork workers, simulator +20 ms, limit 50/s)."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

from harness import (
    IN_FLIGHT,
    RATE,
    SIM_LATENCY_MS,
    USER_RATE,
    Context,
    LoadMeter,
    fmt,
    jobs_for,
    percentile,
    start_workers,
    verdict,
)


def max_in_window(times: list[float], window: float = 1.0) -> tuple[int, float]:
    """Largest number of times in any half-open window [t, t + window); (count, start)."""
    best, at, j = 0, times[0] if times else 0.0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window:
            j += 1
        if j - i > best:
            best, at = j - i, t
    return best, at


def rate_run(ctx: Context, n: int, guard: float | None, tag: str, limits_window: bool = False) -> dict[str, Any]:
    """n cancels through 2 prefork workers at RATE/s; the simulator's receipt times, analysed."""
    from ukcancel.command import CancelCommand

    store, sim = ctx.store, ctx.simulator()
    store.reset()
    sim.load_jobs(jobs_for(USER_RATE, 100_000, n))
    sim.set_latency(SIM_LATENCY_MS)
    extra = {} if guard is None else {"UKCANCEL_FLEET_GUARD_SECONDS": repr(guard)}
    workers = start_workers(ctx.children, store.url, sim, 2, tag, limits_window=limits_window, **extra)
    try:
        sim.clear_log()
        meter = LoadMeter(store, [w.pgid for w in workers] + [sim.child.pgid])
        commands = [CancelCommand(job_id=100_000 + i, user_id=USER_RATE, products=["LightCurve"],
                                  submitted_by="bench-rate") for i in range(n)]
        submitted = time.time()
        store.runtime.schedule.enqueue(commands)  # one round trip + a turn per lane
        done, waited = store.wait_terminal([c.id for c in commands], timeout=n / RATE + 45)
        finished = time.time()
        load = meter.stop()
        log = sim.log()
    finally:
        ctx.children.stop_many(workers)
    records = store.runtime.registry.get_many([c.id for c in commands])
    completed_ok = sum(1 for r in records if r is not None and r.state == "completed" and r.result
                       and r.result[0] == 1)
    store.reset()

    receipts = sorted(e["t"] for e in log if str(e["endpoint"]).endswith("canceljob.php"))
    others = Counter(e["endpoint"] for e in log if not str(e["endpoint"]).endswith("canceljob.php"))
    span = receipts[-1] - receipts[0] if len(receipts) > 1 else float("nan")
    achieved = len(receipts) / span if len(receipts) > 1 and span > 0 else float("nan")
    window_max, window_at = max_in_window(receipts) if receipts else (0, 0.0)
    gaps = [b - a for a, b in zip(receipts, receipts[1:])]
    # Burstiness: evenly paced calls put RATE/5 in any 200 ms; a window spent in a burst puts up to RATE.
    burst_200ms, _ = max_in_window(receipts, 0.2) if receipts else (0, 0.0)
    return {
        "n": n, "guard_seconds": guard, "limits_window": limits_window, "terminal": done, "completed_ok": completed_ok,
        "canceljob_calls": len(receipts), "other_calls": dict(others), "first_to_last_s": span,
        "achieved_per_second": achieved, "achieved_over_limit": achieved / RATE,
        "achieved_n_minus_1_per_second": (len(receipts) - 1) / span if len(receipts) > 1 and span > 0 else None,
        "max_in_any_1s_window": window_max,
        "max_window_start_offset_s": window_at - receipts[0] if receipts else None,
        "gap_ms_median": 1000 * statistics.median(gaps) if gaps else None,
        "gap_ms_p90": 1000 * percentile(gaps, 90) if gaps else None,
        "gap_ms_max": 1000 * max(gaps) if gaps else None,
        "max_in_any_200ms_window": burst_200ms,
        "submit_to_last_completion_s": finished - submitted, "load": load,
    }


RATE_GOAL = 0.98  # of the limit: every point below it is bulk cancellation time lost
GUARD_WHAT_IFS = (0.01, 0.015, 0.02, 0.04)


def bench_rate(ctx: Context) -> dict[str, Any]:
    from ukcancel.settings import Settings

    n = 300 if ctx.quick else 2000
    n_whatif = 150 if ctx.quick else 500
    shipped_guard = Settings().fleet_guard_seconds
    main = rate_run(ctx, n, None, "rate")
    # What-ifs: the `limits` library's moving window (what the gate would use without its own
    # window), and the gate's own paced window without a guard interval.
    whatifs = [rate_run(ctx, n_whatif, None, "ratel", limits_window=True), rate_run(ctx, n_whatif, 0.0, "rateg"),
               *(rate_run(ctx, n_whatif, g, f"rate{i}") for i, g in enumerate(GUARD_WHAT_IFS) if g != shipped_guard)]
    out = {"limit_per_second": RATE, "in_flight_cap": IN_FLIGHT, "latency_ms": SIM_LATENCY_MS,
           "workers": "2 x prefork concurrency 8", "shipped_guard_seconds": shipped_guard, **main,
           "what_if": whatifs}
    out["goal_rate_met"] = main["achieved_per_second"] >= RATE_GOAL * RATE
    out["goal_window_met"] = main["max_in_any_1s_window"] <= RATE
    runs = [main, *whatifs]

    def col(r: dict[str, Any], key: str, digits: int = 1, unit: str = "") -> str:
        value = r.get(key)
        return "-" if value is None else (fmt(value, digits) + unit if isinstance(value, float) else f"{value}{unit}")

    heads = [f"shipped (guard {shipped_guard} s), N={n:,}"] + [
        f"what-if `limits` moving window, N={r['n']:,}" if r["limits_window"]
        else f"what-if guard {r['guard_seconds']:g} s, N={r['n']:,}" for r in whatifs]
    rows = [
        ["commands completed with result OK", *[f"{r['completed_ok']:,} / {r['n']:,}" for r in runs], "all",
         verdict(main["completed_ok"] == main["n"])],
        ["canceljob.php calls received", *[f"{r['canceljob_calls']:,}" for r in runs], "= N",
         verdict(main["canceljob_calls"] == main["n"])],
        ["first -> last receipt (s)", *[col(r, "first_to_last_s", 2) for r in runs], "", ""],
        ["achieved rate = calls / (last - first) (/s)", *[col(r, "achieved_per_second", 2) for r in runs],
         f">= {RATE_GOAL * RATE:g}", verdict(out["goal_rate_met"])],
        ["achieved / limit", *[col(r, "achieved_over_limit", 3) for r in runs], f">= {RATE_GOAL}",
         verdict(out["goal_rate_met"])],
        ["max calls in any sliding 1 s window", *[col(r, "max_in_any_1s_window") for r in runs], f"<= {RATE:g}",
         verdict(out["goal_window_met"])],
        ["max calls in any 200 ms window (burstiness)", *[col(r, "max_in_any_200ms_window") for r in runs],
         f"(paced: {RATE / 5:g})", ""],
        ["inter-arrival gap median / p90 / max (ms)",
         *[f"{fmt(r['gap_ms_median'] or 0, 1)} / {fmt(r['gap_ms_p90'] or 0, 1)} / {fmt(r['gap_ms_max'] or 0, 0)}"
           for r in runs], f"(paced: {1000 / RATE:g})", ""],
        ["enqueue -> last completion (s)", *[col(r, "submit_to_last_completion_s", 2) for r in runs], "", ""],
        ["other processes' CPU meanwhile (cores)", *[fmt(r["load"]["foreign_cores"], 2) for r in runs], "", ""],
    ]
    ctx.out.table(
        f"2. Rate accuracy: limit {RATE:g}/s, in-flight cap {IN_FLIGHT}, simulator +{SIM_LATENCY_MS} ms, "
        "2 workers (prefork x8)",
        ["measure", *heads, "goal", "verdict"], rows,
        caption="Receipt times `t` from the simulator's request log (canceljob.php only). Commands enqueued in-process "
                "with Schedule.enqueue (one round trip, a turn per lane). Verdicts judge the shipped settings. What-ifs: "
                "the `limits` library's MovingWindowRateLimiter (Redis storage) in place of the gate's own paced "
                "window (ops/bench/limits_worker.py; in-flight cap, pause and breaker unchanged), and the gate's "
                "own window with UKCANCEL_FLEET_GUARD_SECONDS=0 (its window is 1 s + guard).",
    )
    ctx.summary.append(["2", "achieved rate / limit", fmt(main["achieved_over_limit"], 3), f">= {RATE_GOAL}",
                        verdict(out["goal_rate_met"])])
    ctx.summary.append(["2", "max calls in a 1 s window", str(main["max_in_any_1s_window"]), f"<= {RATE:g}",
                        verdict(out["goal_window_met"])])
    return out
