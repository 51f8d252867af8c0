"""Logs: JSON lines with the work's context (command, batch, user, task), and never a token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from processes import wait_for  # ops/bench/processes.py, on the path by pyproject.toml's pytest `pythonpath`

from ukcancel import logs
from ukcancel.assemble import create_api, create_runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.stream import CommandStreamConsumer

ASTRO = "astro@example.org"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's JSON lines, as `UKCANCEL_LOG_FORMAT=json` writes them."""
    stream = io.StringIO()
    installed = logs.handler(logs.JSON, stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(installed)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(installed)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_request_is_logged_as_json_with_its_context_and_without_the_token(captured: io.StringIO) -> None:
    runtime = create_runtime(Settings(), connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    runtime.schedule.dispatch = lambda count: None
    client = create_api(runtime=runtime).test_client()
    token, _ = runtime.tokens.create(ASTRO)
    auth = {"Authorization": f"Bearer {token}", "X-Request-Id": "req-42"}
    command_id = client.post("/v1/cancellations", json={"job_id": 1001}, headers=auth).get_json()["id"]
    answer = client.get(f"/v1/cancellations/{command_id}", headers=auth)
    assert answer.headers["X-Request-Id"] == "req-42"
    client.get("/v1/cancellations", headers={"Authorization": f"Bearer {token}x"})  # a wrong token: 401
    logging.getLogger("ukcancel.test").warning("a careless message with %s in it", token)

    text = captured.getvalue()
    assert token not in text and token[4:] not in text
    found = lines(captured)
    access = [line for line in found if line["logger"] == "ukcancel.service.access"]
    assert len(access) == 3
    read = next(line for line in access if line["message"].startswith(f"GET /v1/cancellations/{command_id}"))
    assert read["command_id"] == command_id and read["user"] == ASTRO and read["request_id"] == "req-42"
    assert read["status"] == 200 and read["level"] == "INFO" and "time" in read
    refused = next(line for line in access if line["status"] == 401)
    assert "user" not in refused  # no valid token: no user
    careless = next(line for line in found if line["logger"] == "ukcancel.test")
    assert careless["message"] == "a careless message with [redacted] in it"
    runtime.connection.close()


def test_a_stream_entry_is_logged_with_its_context_and_without_its_token(captured: io.StringIO) -> None:
    runtime = create_runtime(Settings(), connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    runtime.schedule.dispatch = lambda count: None
    token, _ = runtime.tokens.create(ASTRO)
    consumer = CommandStreamConsumer(runtime, "logs-test")
    accepted = consumer.handle("1-0", {"token": token, "job_id": "1001", "request_id": "r-1"})
    rejected = consumer.handle("2-0", {"token": token, "job_id": "not a number"})
    unknown = consumer.handle("3-0", {"token": token + "zz", "job_id": "1001"})
    assert accepted.command_id and rejected.reason and unknown.reason

    text = captured.getvalue()
    assert token not in text and token[4:] not in text
    found = lines(captured)
    taken = next(line for line in found if "accepted as command" in line["message"])
    assert taken["entry_id"] == "1-0" and taken["command_id"] == accepted.command_id
    assert taken["user"] == ASTRO and taken["request_id"] == "r-1"
    dead = [line for line in found if "dead-lettered" in line["message"]]
    assert {line["entry_id"] for line in dead} == {"2-0", "3-0"}
    runtime.connection.close()


def test_text_is_the_default_and_json_is_a_setting() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"UKCANCEL_LOG_FORMAT": "json"}).log_format == "json"
    stream = io.StringIO()
    handler = logs.handler(logs.TEXT, stream)
    record = logging.LogRecord("ukcancel.x", logging.INFO, __file__, 1, "Bearer %s sent", ("ukc_abc-DEF_123",), None)
    with logs.context(command_id="c1", user=ASTRO):
        handler.handle(record)
    assert stream.getvalue().rstrip().endswith("ukcancel.x: [redacted] sent command_id=c1 user=astro@example.org")


def test_a_worker_logs_json_with_the_task_and_the_command(
    redis_url: str, simulator: SimulatorServer, worker_factory: Any, make_worker_env: Callable[..., dict[str, str]]
) -> None:
    worker = worker_factory(make_worker_env(redis_url, simulator, UKCANCEL_LOG_FORMAT="json"), pool="prefork",
                            concurrency=1, name="jsonlogs")
    runtime = create_runtime(Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url))
    token, _ = runtime.tokens.create(ASTRO)
    client = create_api(runtime=runtime).test_client()
    auth = {"Authorization": f"Bearer {token}"}
    batch = client.post("/v1/batches", json={"items": [{"job_id": 1001, "products": ["lc"]}]}, headers=auth).get_json()
    state = client.get(f"/v1/batches/{batch['id']}?wait=20", headers=auth).get_json()
    assert state["state"] == "completed", state
    command_id = state["items"][0]["command_id"]

    def completed_line() -> dict[str, Any] | None:
        found = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        return next((line for line in found if line.get("command_id") == command_id
                     and "completed" in line["message"]), None)

    # The worker logs the completion just after storing it: the answer can be read before the line is written.
    done = wait_for(completed_line, 10, "the worker's JSON line of the completed command")
    assert done["batch_id"] == batch["id"] and done["user"] == ASTRO
    assert done["task_id"] and done["logger"] == "ukcancel.worker.cancellation"
    assert token not in worker.log()
    runtime.connection.close()
