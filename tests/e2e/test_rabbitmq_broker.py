"""The pipeline with RabbitMQ as the Celery broker (`CELERY_BROKER_URL=amqp://...`), Redis as the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from ukcancel.assemble import create_api
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer
from ukcancel.worker.celery_app import QUEUE
from ukcancel.worker.tasks import celery_of

pytestmark = pytest.mark.e2e

ASTRO = "astro@example.org"
CANCELLED_OK = "Job cancelled OK"


def test_rabbitmq_broker_runs_commands_and_retries(
    redis_url: str,
    rabbitmq_url: str,
    simulator: SimulatorServer,
    make_worker_env: Callable[..., dict[str, str]],
    worker_factory: Any,
) -> None:
    env = make_worker_env(redis_url, simulator, CELERY_BROKER_URL=rabbitmq_url)
    settings = Settings.from_env(env)
    assert settings.effective_broker_url == rabbitmq_url
    app = create_api(settings)
    runtime = app.extensions["ukcancel"]
    assert celery_of(runtime).conf.broker_url == rabbitmq_url
    # The queue name is fixed: start from an empty one, whatever an earlier run left there.
    with celery_of(runtime).connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_declare(QUEUE, durable=True, auto_delete=False)
        channel.queue_purge(QUEUE)
    token, _ = runtime.tokens.create(ASTRO)
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()

    worker = worker_factory(env, name="amqp")
    simulator.state.add_faults(Fault("http503", count=2))  # retried through the broker (countdown)

    ids = []
    for job_id, products in ((1001, ["LightCurve"]), (1002, ["spec"])):
        response = client.post("/v1/cancellations", json={"job_id": job_id, "products": products}, headers=headers)
        assert response.status_code == 202
        ids.append(response.get_json()["id"])

    results = {}
    deadline = time.monotonic() + 30
    for command_id in ids:
        while True:
            command = client.get(f"/v1/cancellations/{command_id}?wait=10", headers=headers).get_json()
            if command["state"] == "completed" or time.monotonic() > deadline:
                break
        results[command_id] = command
    first, second = (results[i] for i in ids)
    assert first["state"] == second["state"] == "completed", worker.log()[-2000:]
    assert first["result"] == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert second["result"] == [1, {"Spectrum": {"code": 0, "text": CANCELLED_OK}}]
    assert first["attempts"] + second["attempts"] == 4  # the two 503s fell on one or both commands
    assert "amqp://guest:**@127.0.0.1:5672//" in worker.log()  # the worker really used RabbitMQ
    calls = [entry for entry in simulator.state.log() if entry["endpoint"] == "canceljob.php"]
    assert [entry["status"] for entry in calls].count(503) == 2 and len(calls) == 4
    runtime.connection.close()
