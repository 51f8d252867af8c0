"""Benchmark 3: fairness: one user's big batch, then another user's single cancel mid-way."""

from __future__ import annotations

import bisect
import json
import statistics
import time
from typing import Any

from harness import (
    RATE,
    SIM_LATENCY_MS,
    USER_BATCH,
    USER_SINGLE,
    Api,
    Context,
    Store,
    fmt,
    jobs_for,
    percentile,
    post_batch,
    post_cancellations,
    start_workers,
    verdict,
)

GOAL_MEDIAN_INTERVALS = 1
GOAL_WORST_INTERVALS = 2


def timed_single(base_url: str, token: str, job_id: int, store: Store) -> dict[str, Any]:
    """Submit one cancel and long-poll it to completion; client and record latencies in seconds."""
    import requests

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    session = requests.Session()
    began = time.time()
    response = session.post(base_url + "/v1/cancellations", data=json.dumps({"job_id": job_id, "products": ["lc"]}),
                            headers=headers, timeout=30)
    if response.status_code != 202:
        raise RuntimeError(f"single cancel refused: {response.status_code} {response.text[:200]}")
    command_id = response.json()["id"]
    state = None
    while time.time() - began < 60:
        polled = session.get(f"{base_url}/v1/cancellations/{command_id}?wait=30", headers=headers, timeout=40)
        state = polled.json().get("state")
        if state in ("completed", "aborted"):
            break
    ended = time.time()
    session.close()
    record = store.runtime.registry.get(command_id)
    completed_at = next((h["at"] for h in (record.history if record else []) if h["state"] == "completed"), None)
    return {
        "id": command_id, "job_id": job_id, "state": state, "client_s": ended - began,
        "created_at": record.created_at if record else None,
        "record_s": (completed_at - record.created_at) if record and completed_at else None,
        "attempts": record.attempts if record else None,
    }


def bench_fairness(ctx: Context) -> dict[str, Any]:
    from ukcancel import keys

    n_batch = 1000 if ctx.quick else 5000
    samples = 6 if ctx.quick else 12
    settle = 4.0 if ctx.quick else 8.0
    interval = 1.0 / RATE
    store, sim = ctx.store, ctx.simulator()
    store.reset()
    sim.load_jobs(jobs_for(USER_BATCH, 200_000, n_batch) + jobs_for(USER_SINGLE, 300_000, 2 * samples + 2))
    sim.set_latency(SIM_LATENCY_MS)
    token_batch = store.token(USER_BATCH, "bench-batch")
    token_single = store.token(USER_SINGLE, "bench-single")
    api = Api(ctx.children, "gunicorn", store.url)
    workers = start_workers(ctx.children, store.url, sim, 2, "fair")
    out: dict[str, Any] = {"batch_items": n_batch, "limit_per_second": RATE, "rate_interval_ms": 1000 * interval,
                           "api": api.label}
    batch_id = None
    import random

    jitter = random.Random(7)
    try:
        timed_single(api.base_url, token_single, 300_000 + 2 * samples + 1, store)  # warm-up, discarded
        time.sleep(1.25)  # let the warm-up call leave the rate window (1 s + guard)
        bare = []
        for i in range(samples):
            bare.append(timed_single(api.base_url, token_single, 300_000 + i, store))
            time.sleep(1.25)  # idle fleet each time: an empty rate window
        # The big batch.
        job_ids = list(range(200_000, 200_000 + n_batch))
        began = time.time()
        mode = "POST /v1/batches"
        seconds, status, payload = post_batch(api.base_url, token_batch, job_ids)
        if status == 202 and isinstance(payload, dict) and "id" in payload:
            batch_id = payload["id"]
            out["batch_submit"] = {"mode": mode, "seconds": seconds, "status": status}
        else:
            mode = f"{n_batch:,} single POSTs (POST /v1/batches answered {status})"
            seconds, statuses, _ = post_cancellations(api.base_url, token_batch, job_ids)
            out["batch_submit"] = {"mode": mode, "seconds": seconds, "statuses": dict(statuses),
                                   "batch_endpoint_status": status, "batch_endpoint_reply": payload}
        out["batch_mode"] = mode
        while time.time() - began < settle:
            time.sleep(0.1)
        mid = []
        for i in range(samples):
            waiting = store.redis.llen(keys.fair_queue(USER_BATCH))
            sample = timed_single(api.base_url, token_single, 300_000 + samples + i, store)
            sample["batch_waiting_at_submit"] = waiting
            sample["batch_elapsed_s"] = time.time() - began
            mid.append(sample)
            time.sleep(0.3 + jitter.random() * 0.6)  # land at different phases of the rate window
        out["batch_waiting_after"] = store.redis.llen(keys.fair_queue(USER_BATCH))
        log = sim.log()
    finally:
        if batch_id is not None:
            try:
                import requests

                requests.delete(f"{api.base_url}/v1/batches/{batch_id}",
                                headers={"Authorization": f"Bearer {token_batch}"}, timeout=30)
            except Exception:
                pass
        ctx.children.stop_many(workers)
        api.stop()
    store.reset()

    from ukcancel.settings import Settings

    window = 1.0 + Settings().fleet_guard_seconds  # the gate's window at RATE/s
    receipts = sorted(e["t"] for e in log if str(e["endpoint"]).endswith("canceljob.php"))
    cancels = [e for e in log if str(e["endpoint"]).endswith("canceljob.php") and isinstance(e["body"], dict)]
    batch_calls = sorted(e["t"] for e in cancels if e["body"].get("UserID") == USER_BATCH)
    for sample in bare + mid:
        # When the simulator received this single's call, and how many batch calls it received
        # between the single's creation and that moment (the fair ring lets ~1 go first).
        mine = [e["t"] for e in cancels if e["body"].get("JobID") == sample["job_id"]
                and e["body"].get("UserID") == USER_SINGLE]
        if mine and sample.get("created_at"):
            sample["to_ukssdc_ms"] = 1000 * (mine[0] - sample["created_at"])
            lo = bisect.bisect_right(batch_calls, sample["created_at"])
            hi = bisect.bisect_left(batch_calls, mine[0])
            sample["batch_calls_before_it"] = hi - lo
            # How long the UKSSDC had seen no call at all when the single's arrived (fleet idle,
            # its rate window spent), and how full the gate's window was just before.
            sample["idle_ms_before_it"] = 1000 * (mine[0] - batch_calls[hi - 1]) if hi > 0 else None
            sample["window_calls_before_it"] = hi - bisect.bisect_left(batch_calls, mine[0] - window)
    busy = [t for t in receipts if t >= began + settle - 2]
    out["fleet_rate_during_mid_samples"] = (len(busy) - 1) / (busy[-1] - busy[0]) if len(busy) > 2 else None
    bare_client = statistics.median(s["client_s"] for s in bare)
    bare_record = statistics.median(s["record_s"] for s in bare)
    for s in mid:
        s["excess_client_intervals"] = (s["client_s"] - bare_client) / interval
        s["excess_record_intervals"] = (s["record_s"] - bare_record) / interval
    out["bare"] = bare
    out["mid"] = mid
    out["bare_client_ms_median"] = 1000 * bare_client
    out["bare_record_ms_median"] = 1000 * bare_record
    mid_client = [s["client_s"] for s in mid]
    out["mid_client_ms_median"] = 1000 * statistics.median(mid_client)
    out["mid_client_ms_max"] = 1000 * max(mid_client)
    out["excess_intervals_median"] = statistics.median(s["excess_client_intervals"] for s in mid)
    out["excess_intervals_max"] = max(s["excess_client_intervals"] for s in mid)
    out["excess_intervals_p90"] = percentile([s["excess_client_intervals"] for s in mid], 90)
    # The goals the performance issue set: a newcomer waits at most 2 intervals, typically 1.
    out["goal_met"] = out["excess_intervals_median"] <= GOAL_MEDIAN_INTERVALS
    out["goal_worst_met"] = out["excess_intervals_max"] <= GOAL_WORST_INTERVALS
    out["all_completed"] = all(s["state"] == "completed" for s in bare + mid)
    # Where a sample's excess is: before the call reached the UKSSDC (the dispatch's share: the
    # permit, the claim, the worker), or in the answer (the stand-in UKSSDC's reply under load,
    # recording the completion, the long poll).
    bare_to = [s["to_ukssdc_ms"] for s in bare if "to_ukssdc_ms" in s]
    split = bare_to and all("to_ukssdc_ms" in s for s in mid)
    if split:
        bare_to_median = statistics.median(bare_to)
        for s in mid:
            s["dispatch_excess_intervals"] = (s["to_ukssdc_ms"] - bare_to_median) / (1000 * interval)
            s["receipt_to_completed_ms"] = 1000 * s["record_s"] - s["to_ukssdc_ms"]
        out["dispatch_excess_intervals_median"] = statistics.median(s["dispatch_excess_intervals"] for s in mid)
        out["dispatch_excess_intervals_max"] = max(s["dispatch_excess_intervals"] for s in mid)
        out["bare_receipt_to_completed_ms_median"] = statistics.median(
            1000 * s["record_s"] - s["to_ukssdc_ms"] for s in bare)
        out["mid_receipt_to_completed_ms_max"] = max(s["receipt_to_completed_ms"] for s in mid)

    def diag(sample: dict[str, Any]) -> list[str]:
        idle = sample.get("idle_ms_before_it")
        to_ukssdc = sample.get("to_ukssdc_ms")
        return [fmt(to_ukssdc, 1) if to_ukssdc is not None else "?",
                fmt(1000 * sample["record_s"] - to_ukssdc, 1) if to_ukssdc is not None and sample["record_s"] else "?",
                str(sample.get("batch_calls_before_it", "-")),
                "-" if idle is None or sample in bare else fmt(idle, 0),
                "-" if sample in bare else str(sample.get("window_calls_before_it", "-"))]

    rows = [[f"bare #{i + 1} (idle fleet)", fmt(1000 * s["client_s"], 1), fmt(1000 * s["record_s"], 1), "-", "-", "-",
             *diag(s)] for i, s in enumerate(bare)]
    rows += [[f"mid-batch #{i + 1}", fmt(1000 * s["client_s"], 1), fmt(1000 * s["record_s"], 1),
              f"{s['batch_waiting_at_submit']:,}", fmt(s["excess_client_intervals"], 1),
              fmt(s["excess_record_intervals"], 1), *diag(s)] for i, s in enumerate(mid)]
    ctx.out.table(
        f"3. Fairness: {USER_SINGLE}'s single cancel while {USER_BATCH}'s {n_batch:,}-item batch runs "
        f"(limit {RATE:g}/s -> 1 interval = {1000 * interval:g} ms)",
        ["sample", "submit->completed ms (client)", "created->completed ms (record)", "batch items waiting",
         "excess intervals (client)", "excess intervals (record)", "created->UKSSDC receipt ms",
         "UKSSDC receipt->completed ms", "batch calls let in first", "UKSSDC idle before it ms", f"batch calls in the {window:g} s before"],
        rows,
        caption=(f"Batch submitted as: {mode} in {fmt(out['batch_submit']['seconds'], 2)} s; singles sent from "
                 f"{settle:g} s after the batch. Bare median {fmt(out['bare_client_ms_median'], 1)} ms; mid-batch median "
                 f"{fmt(out['mid_client_ms_median'], 1)} ms, max {fmt(out['mid_client_ms_max'], 1)} ms -> excess "
                 f"median {fmt(out['excess_intervals_median'], 1)}, p90 {fmt(out['excess_intervals_p90'], 1)}, max "
                 f"{fmt(out['excess_intervals_max'], 1)} intervals (goal: median <= {GOAL_MEDIAN_INTERVALS} "
                 f"{verdict(out['goal_met'])}, worst <= {GOAL_WORST_INTERVALS} "
                 f"{verdict(out['goal_worst_met'])}). Fleet rate while sampling: "
                 f"{fmt(out['fleet_rate_during_mid_samples'] or 0, 1)}/s. API: {api.label}. 'batch calls let in first' = "
                 "batch calls the simulator received between the single's creation and its own call (newcomer "
                 "first: 0, or 1 already claimed when it arrived); "
                 "'UKSSDC idle before it' = time since the simulator's previous call; "
                 f"'batch calls in the {window:g} s before' = {RATE:g} means the gate's window (1 s + guard) was full, "
                 "so the single waited for a slot. Latencies include the client's long poll (GET ?wait=30). "
                 "'UKSSDC receipt->completed' includes the simulator's own "
                 f"{SIM_LATENCY_MS:g} ms{split_caption(out)}."),
    )
    ctx.summary.append(["3", f"single cancel mid-batch, excess over bare (median of {samples})",
                        f"{fmt(out['excess_intervals_median'], 1)} intervals", f"<= {GOAL_MEDIAN_INTERVALS}",
                        verdict(out["goal_met"])])
    ctx.summary.append(["3", f"single cancel mid-batch, excess over bare (worst of {samples})",
                        f"{fmt(out['excess_intervals_max'], 1)} intervals", f"<= {GOAL_WORST_INTERVALS}",
                        verdict(out["goal_worst_met"])])
    if "dispatch_excess_intervals_max" in out:
        ctx.summary.append(["3", "  of which before the call reached the UKSSDC (worst; the dispatch's share)",
                            f"{fmt(out['dispatch_excess_intervals_max'], 1)} intervals", "(beside it)", ""])
    return out


def split_caption(out: dict[str, Any]) -> str:
    if "dispatch_excess_intervals_max" not in out:
        return ""
    return (f". Before the call reached the UKSSDC, the excess over bare was median "
            f"{fmt(out['dispatch_excess_intervals_median'], 1)}, worst {fmt(out['dispatch_excess_intervals_max'], 1)} "
            f"intervals (the dispatch's share); from the UKSSDC's receipt to the completion, bare median "
            f"{fmt(out['bare_receipt_to_completed_ms_median'], 1)} ms, mid-batch worst "
            f"{fmt(out['mid_receipt_to_completed_ms_max'], 1)} ms")
