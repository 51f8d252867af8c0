"""The shipped metrics layout reaches a scrape: gunicorn's /metrics and each prefork worker's own port.

The API under gunicorn and a `ukcancel worker --pool prefork` each get their own multiprocess
directory and the worker its metrics port, as docker-compose.yml lays them out; the UKSSDC calls
the worker's pool processes make show up in a scrape of the worker, the requests in a scrape of the
API, and no scrape names a user.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml
from processes import clean_environment, free_port, start_in_own_group, stop_group, wait_until
from prometheus_client.parser import text_string_to_metric_families

from ukcancel.simulator import SimulatorServer
from ukcancel.token import TokenRegistry

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
ASTRO = "astro@example.org"


def compose_environment(service: str) -> dict[str, str]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {key: str(value) for key, value in (services[service].get("environment") or {}).items()}


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    text = requests.get(url, timeout=10).text
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, found


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def api_process(tmp_path: Path, redis_url: str, simulator: SimulatorServer) -> Any:
    started: list[Any] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        process = start_in_own_group(
            [GUNICORN, "--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread",
             "--threads", "4", "ukcancel.wsgi:app"],
            {**clean_environment(), **env}, tmp_path / "gunicorn.log",
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        assert wait_until(answers, 30), (tmp_path / "gunicorn.log").read_text()
        return url

    yield start
    for process in started:
        stop_group(process, 15)


def test_worker_counters_reach_a_scrape_of_the_worker_and_requests_a_scrape_of_the_api(
    tmp_path: Path, redis_url: str, simulator: SimulatorServer, worker_factory: Any,
    make_worker_env: Callable[..., dict[str, str]], api_process: Callable[[dict[str, str]], str],
) -> None:
    api_layout, worker_layout = compose_environment("api"), compose_environment("worker")
    # The shipped layout: a directory of each part's own, and a port for the worker's target.
    assert api_layout["PROMETHEUS_MULTIPROC_DIR"] and worker_layout["PROMETHEUS_MULTIPROC_DIR"]
    assert "UKCANCEL_WORKER_METRICS_PORT" in worker_layout and "UKCANCEL_WORKER_METRICS_PORT" not in api_layout
    api_dir, worker_dir = tmp_path / "api-metrics", tmp_path / "worker-metrics"  # the two tmpfs
    api_dir.mkdir()
    worker_dir.mkdir()
    worker_port = free_port()  # in place of the compose port, free on this host

    worker_factory(make_worker_env(redis_url, simulator, PROMETHEUS_MULTIPROC_DIR=str(worker_dir),
                                   UKCANCEL_WORKER_METRICS_PORT=str(worker_port)),
                   pool="prefork", concurrency=2, name="scraped")
    api = api_process({"REDIS_URL": redis_url, "UKSSDC_BASE_URL": simulator.base_url,
                       "PROMETHEUS_MULTIPROC_DIR": str(api_dir)})
    connection = redis.Redis.from_url(redis_url)
    token, _ = TokenRegistry(connection).create(ASTRO)
    connection.close()
    auth = {"Authorization": f"Bearer {token}"}

    ids = []
    for job_id in (1001, 1004, 1007):
        answer = requests.post(f"{api}/v1/cancellations", json={"job_id": job_id, "products": ["lc"]},
                               headers=auth, timeout=10)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    for command_id in ids:
        command = requests.get(f"{api}/v1/cancellations/{command_id}?wait=30", headers=auth, timeout=40).json()
        assert command["state"] == "completed", command

    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    assert wait_until(lambda: total(scrape(worker_url)[1], "ukcancel_ukssdc_calls_total") >= 3, 10)
    worker_text, worker = scrape(worker_url)
    assert total(worker, "ukcancel_ukssdc_calls_total", endpoint="canceljob.php") == 3
    assert total(worker, "ukcancel_ukssdc_call_duration_seconds_count", endpoint="canceljob.php") == 3
    assert total(worker, "ukcancel_command_results_total") == 3
    assert len(list(worker_dir.glob("*.db"))) >= 1  # written by the pool processes, not the main one
    assert "ukcancel_commands" not in worker  # the store's gauges come from the API, once

    api_text, scraped = scrape(f"{api}/metrics")
    assert total(scraped, "ukcancel_http_requests_total", method="POST", route="/v1/cancellations",
                 status="202") == 3  # both gunicorn processes, added up
    assert total(scraped, "ukcancel_http_request_duration_seconds_count", method="GET",
                 route="/v1/cancellations/<command_id>") == 3
    assert total(scraped, "ukcancel_ukssdc_calls_total") == 0  # no double count of the worker's calls
    assert total(scraped, "ukcancel_live_workers") == 1
    assert total(scraped, "ukcancel_commands", state="completed") == 3
    for text in (worker_text, api_text):
        assert ASTRO not in text and "@" not in text  # /metrics is open: no e-mail address in a label
