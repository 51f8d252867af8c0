"""The fleet toward the UKSSDC with real worker processes, real Redis and the simulator over HTTP.

What the UKSSDC sees is read from the simulator's request log (`t` = time of receipt), never
from the service's own account.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from processes import wait_for
from support import busiest_window  # tests/support.py

from ukcancel.command import CancelCommand
from ukcancel.runtime import Runtime
from ukcancel.simulator import Fault, SimulatorServer

BULK = "bulk@example.org"  # the simulator's seeded jobs 2001-2200, lc and psf queued
ASTRO = "astro@example.org"
CANCEL = "canceljob.php"


def submit(rt: Runtime, user: str, job_ids: list[int], products: list[str] | str = ("LightCurve",)) -> list[str]:
    commands = [CancelCommand(job_id=j, user_id=user, products=list(products) if not isinstance(products, str)
                              else products) for j in job_ids]
    rt.schedule.enqueue(commands)
    return [c.id for c in commands]


def all_completed(rt: Runtime, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(c is not None and c.state == "completed" for c in rt.registry.get_many(ids))


def cancel_times(simulator: SimulatorServer) -> list[float]:
    return sorted(entry["t"] for entry in simulator.state.log() if entry["endpoint"] == CANCEL)


def test_rate_limit_holds_across_two_worker_processes(
    redis_url: str, simulator: SimulatorServer, api_runtime: Runtime, worker_factory, make_worker_env
) -> None:
    simulator.state.set_latency(30)
    env = make_worker_env(redis_url, simulator, UKCANCEL_FLEET_RATE_PER_SECOND="10", UKCANCEL_FLEET_MAX_IN_FLIGHT="8")
    workers = [worker_factory(env, concurrency=4, name=f"rate{n}") for n in (1, 2)]

    ids = submit(api_runtime, BULK, list(range(2001, 2061)))
    wait_for(all_completed(api_runtime, ids), 40, "60 commands to complete")

    times = cancel_times(simulator)
    assert len(times) == 60
    assert busiest_window(times) <= 10, f"{busiest_window(times)} calls within one second"
    # Both processes did part of the work: the limit was shared, not kept by one process alone.
    assert all("succeeded" in worker.log() for worker in workers)
    # Close to the limit, not far below it (10 per 1.1 s with the guard interval).
    assert times[-1] - times[0] < 60 / 10 * 1.1 + 2


def test_retry_after_pauses_the_whole_fleet(
    redis_url: str, simulator: SimulatorServer, api_runtime: Runtime, worker_factory, make_worker_env
) -> None:
    simulator.state.add_faults(Fault("http429", retry_after=2))
    env = make_worker_env(redis_url, simulator, UKCANCEL_FLEET_MAX_IN_FLIGHT="1")
    worker_factory(env, concurrency=4, name="pause1")
    worker_factory(env, concurrency=4, name="pause2")

    ids = submit(api_runtime, BULK, list(range(2001, 2007)))
    wait_for(all_completed(api_runtime, ids), 30, "6 commands to complete")

    log = [entry for entry in simulator.state.log() if entry["endpoint"] == CANCEL]
    assert log[0]["status"] == 429
    assert log[1]["t"] - log[0]["t"] >= 2.0 - 0.05, "a call reached the UKSSDC during its Retry-After"
    assert [entry["status"] for entry in log[1:]] == [200] * 6
    assert all(c.result[0] == 1 for c in api_runtime.registry.get_many(ids))  # type: ignore[union-attr]


def test_commands_wait_queued_behind_an_open_breaker_then_complete(
    redis_url: str, simulator: SimulatorServer, api_runtime: Runtime, worker_factory, make_worker_env
) -> None:
    simulator.state.add_faults(Fault("http500", count=3))
    env = make_worker_env(
        redis_url, simulator, UKCANCEL_FLEET_MAX_IN_FLIGHT="1", UKCANCEL_BREAKER_FAILURE_THRESHOLD="3",
        UKCANCEL_BREAKER_COOLDOWN_SECONDS="2", UKCANCEL_MAX_ATTEMPTS="8",
    )
    worker_factory(env, concurrency=4, name="breaker")

    ids = submit(api_runtime, BULK, list(range(2001, 2006)))
    wait_for(lambda: len(simulator.state.log()) >= 3, 20, "three failures")
    time.sleep(0.5)  # well inside the cool-down
    waiting = [c for c in api_runtime.registry.get_many(ids) if c is not None]
    assert all(c.state != "completed" for c in waiting), "a command was failed by the open breaker"
    tried = {entry["body"]["JobID"] for entry in simulator.state.log()}
    untouched = [c for c in waiting if c.job_id not in tried]
    assert untouched and all(c.state == "queued" and c.attempts == 0 for c in untouched)
    assert all(c.state == "retrying" for c in waiting if c.job_id in tried)

    wait_for(all_completed(api_runtime, ids), 30, "the commands to complete once the breaker closed")
    log = simulator.state.log()
    failures = [entry for entry in log if entry["status"] == 500]
    assert len(failures) == 3
    after = [entry for entry in log if entry["t"] > failures[-1]["t"]]
    assert after[0]["t"] - failures[-1]["t"] >= 2.0 - 0.05, "a call went through before the cool-down ended"
    assert all(c.result[0] == 1 for c in api_runtime.registry.get_many(ids))  # type: ignore[union-attr]


def test_a_single_cancel_overtakes_a_big_batch_of_another_user(
    redis_url: str, simulator: SimulatorServer, api_runtime: Runtime, worker_factory, make_worker_env
) -> None:
    simulator.state.set_latency(20)
    env = make_worker_env(redis_url, simulator, UKCANCEL_FLEET_RATE_PER_SECOND="20", UKCANCEL_FLEET_MAX_IN_FLIGHT="4")
    worker_factory(env, concurrency=4, name="fair")

    submit(api_runtime, BULK, list(range(2001, 2201)))
    wait_for(lambda: len(cancel_times(simulator)) >= 20, 20, "the batch to be under way")
    submitted_at = time.time()
    [single] = submit(api_runtime, ASTRO, [1001])
    wait_for(all_completed(api_runtime, [single]), 20, "the single cancel")

    later = [entry for entry in simulator.state.log() if entry["endpoint"] == CANCEL and entry["t"] >= submitted_at]
    position = next(i for i, entry in enumerate(later) if entry["body"]["UserID"] == ASTRO)
    # Only calls already holding a permit (at most 4 in flight) and one round-robin turn come first.
    assert position <= 5, f"the single cancel was call {position + 1} after its submission"
    assert len(cancel_times(simulator)) < 200  # the batch was still running: it really overtook
