"""`GET /metrics`: open, Prometheus text, counted where things happen and read from Redis at scrape."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ukcancel.assemble import create_api, create_runtime
from ukcancel.command import CancelCommand
from ukcancel.fleet import FleetGate, Permit
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer
from ukcancel.worker.embedded import EmbeddedWorker

ASTRO = "astro@example.org"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_terminal(runtime: Runtime, ids: list[str], timeout: float = 20) -> None:
    for command_id in ids:
        runtime.registry.wait_terminal(command_id, timeout)


def test_metrics_are_open_and_count_calls_results_retries_states_and_queues(simulator: SimulatorServer) -> None:
    settings = Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05, retry_max_delay_seconds=0.2,
                        fleet_rate_per_second=50, metrics_cache_seconds=0)  # every scrape counts anew
    runtime = create_runtime(settings)
    client = create_api(runtime=runtime).test_client()
    before = samples(client.get("/metrics").get_data(as_text=True))
    simulator.state.add_faults(Fault("http503"))
    commands = [CancelCommand(job_id=1001, user_id=ASTRO, products=["LightCurve"]),
                CancelCommand(job_id=1004, user_id=ASTRO, products=["LightCurve"])]
    with EmbeddedWorker(runtime):
        runtime.schedule.enqueue(commands)
        wait_terminal(runtime, [c.id for c in commands])
    runtime.schedule.dispatch = lambda count: None  # the worker has stopped: this one stays waiting
    runtime.schedule.enqueue([CancelCommand(job_id=2001, user_id="bulk@example.org", products="all")])

    response = client.get("/metrics")  # no Authorization header
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    after = samples(response.get_data(as_text=True))

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("ukcancel_ukssdc_calls_total", endpoint="canceljob.php", outcome="http_503") == 1
    assert grew("ukcancel_ukssdc_calls_total", endpoint="canceljob.php", outcome="ok") == 1
    assert grew("ukcancel_ukssdc_calls_total", endpoint="canceljob.php", outcome="refused") == 1  # OK 0
    assert grew("ukcancel_ukssdc_call_duration_seconds_count", endpoint="canceljob.php") == 3
    assert grew("ukcancel_fleet_permit_wait_seconds_count", outcome="granted") >= 3
    assert grew("ukcancel_command_retries_total") == 1
    assert grew("ukcancel_command_results_total", status="1") == 1
    assert grew("ukcancel_command_results_total", status="0") == 1
    assert value(after, "ukcancel_commands", state="completed", status="1") == 1
    assert value(after, "ukcancel_commands", state="completed", status="0") == 1
    assert value(after, "ukcancel_commands", state="queued", status="") == 1
    assert value(after, "ukcancel_queue_depth") == 1
    assert value(after, "ukcancel_queue_users") == 1 and value(after, "ukcancel_queue_longest_line") == 1
    assert "@" not in response.get_data(as_text=True)  # /metrics is open: no user's e-mail in any label
    assert value(after, "ukcancel_fleet_breaker_state", state="closed") == 1
    assert value(after, "ukcancel_fleet_rate_limit_per_second") == 50

    FleetGate(runtime.connection, settings).configure(rate_per_second=7)
    for _ in range(settings.breaker_failure_threshold):
        gate = FleetGate(runtime.connection, settings)
        permit = gate.acquire(1.0)  # permits are paced 1/rate apart
        assert isinstance(permit, Permit)
        gate.release(permit, "failed")
    later = samples(client.get("/metrics").get_data(as_text=True))
    assert value(later, "ukcancel_fleet_breaker_state", state="open") == 1
    assert value(later, "ukcancel_fleet_rate_limit_per_second") == 7

    operation = client.get("/openapi.json").json["paths"]["/metrics"]["get"]
    assert operation["security"] == []


def test_metrics_of_worker_processes_are_added_up_under_prometheus_multiproc_dir(
    redis_url: str, simulator: SimulatorServer, worker_factory, make_worker_env, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = make_worker_env(redis_url, simulator, PROMETHEUS_MULTIPROC_DIR=str(directory))
    worker_factory(env, name="metrics1")
    worker_factory(env, name="metrics2")
    runtime = create_runtime(Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url,
                                      metrics_multiproc_dir=str(directory)))
    commands = [CancelCommand(job_id=2001 + i, user_id="bulk@example.org", products=["LightCurve"]) for i in range(6)]
    runtime.schedule.enqueue(commands)
    wait_terminal(runtime, [c.id for c in commands])
    time.sleep(0.2)

    found = samples(create_api(runtime=runtime).test_client().get("/metrics").get_data(as_text=True))

    assert value(found, "ukcancel_ukssdc_calls_total", endpoint="canceljob.php", outcome="ok") == 6
    assert value(found, "ukcancel_command_results_total", status="1") == 6
    assert value(found, "ukcancel_commands", state="completed", status="1") == 6
    assert len(list(directory.glob("*.db"))) >= 2  # files written by the worker processes
