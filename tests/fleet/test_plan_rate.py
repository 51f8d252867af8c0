"""A large plan computed by real worker processes: the fleet's rate limit holds toward the UKSSDC.

What the UKSSDC sees is read from the simulator's request log (`t` = time of receipt).
"""

from __future__ import annotations

import time

from test_fleet_processes import busiest_window

from ukcancel.assemble import create_api, create_runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer

BULK = "bulk@example.org"  # the simulator's seeded jobs 2001-2200, lc and psf queued
RATE = 40


def test_the_rate_limit_holds_while_a_large_plan_is_computed(
    redis_url: str, simulator: SimulatorServer, worker_factory, make_worker_env
) -> None:
    simulator.state.set_latency(20)
    env = make_worker_env(redis_url, simulator, UKCANCEL_FLEET_RATE_PER_SECOND=str(RATE),
                          UKCANCEL_FLEET_MAX_IN_FLIGHT="8", UKCANCEL_JOB_STATUS_TTL_SECONDS="60")
    for n in (1, 2):
        worker_factory(env, concurrency=4, name=f"plan{n}")
    runtime = create_runtime(Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url,
                                      job_status_ttl_seconds=60))
    client = create_api(runtime=runtime).test_client()
    headers = {"Authorization": f"Bearer {runtime.tokens.create(BULK, name='bulk')[0]}"}

    started = time.monotonic()
    created = client.post("/v1/plans", json={"name": "Bulk field 21*"}, headers=headers)
    assert created.status_code == 202
    # Meanwhile the same user's jobs page asks for no second refresh: the one under way is shared.
    assert client.get("/v1/jobs", headers=headers).json["refreshing"] is True
    plan = None
    while time.monotonic() - started < 60 and (plan is None or plan["state"] == "computing"):
        plan = client.get(created.headers["Location"] + "?wait=30", headers=headers).json
    assert plan is not None and plan["state"] == "ready", plan
    elapsed = time.monotonic() - started

    assert plan["counts"] == {"jobs": 100, "products": 200, "left_out": 100}  # 2100-2199; 2001-2099 and 2200 left out
    log = simulator.state.log()
    times = sorted(entry["t"] for entry in log)
    assert [e["endpoint"] for e in log].count("listOldJobs.php") == 1
    assert [e["endpoint"] for e in log].count("checkProductStatus.php") == 200  # every job once, none twice
    assert busiest_window(times) <= RATE, f"{busiest_window(times)} calls within one second"
    assert elapsed >= 201 / RATE * 0.9  # paced by the limit, not faster
    runtime.connection.close()
