"""The whole pipeline with real parts: HTTP API -> Redis record + fair queue -> Celery worker
process -> UKSSDC simulator over HTTP -> Redis record -> API.

The API runs in this process (Flask test client) against the same Redis database and broker as
the `ukcancel worker` subprocesses. Back-off is made short through the environment, never slept
out; every wait is a bounded poll.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from processes import wait_for

from ukcancel import keys
from ukcancel.assemble import create_api
from ukcancel.outcome import CONFIRMED_CANCELLED_TEXT
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer
from ukcancel.worker.celery_app import QUEUE

pytestmark = pytest.mark.e2e

ASTRO = "astro@example.org"
CANCELLED_OK = "Job cancelled OK"
ALREADY_FINISHED = "Job could not be cancelled - has it already finished?"




@dataclass
class Pipeline:
    env: dict[str, str]
    sim: SimulatorServer
    redis: redis.Redis
    app: Any
    token: str

    @property
    def runtime(self) -> Any:
        return self.app.extensions["ukcancel"]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, body: Any) -> Any:
        return self.app.test_client().post("/v1/cancellations", json=body, headers=self.headers())

    def submit(self, job_id: int, products: list[str] | str = "all") -> str:
        response = self.post({"job_id": job_id, "products": products})
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.get_json()["id"]

    def get(self, command_id: str, wait: int = 0) -> dict[str, Any]:
        response = self.app.test_client().get(
            f"/v1/cancellations/{command_id}" + (f"?wait={wait}" if wait else ""), headers=self.headers()
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def result(self, command_id: str, timeout: float = 20) -> dict[str, Any]:
        """The command once terminal, by long polls (the API's own wait, no busy polling)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = int(deadline - time.monotonic())
            command = self.get(command_id, wait=max(1, min(remaining, 10)))
            if command["state"] in ("completed", "aborted"):
                return command
            if time.monotonic() >= deadline:
                raise AssertionError(f"command not terminal after {timeout} s: {command}")

    def calls(self, endpoint: str = "canceljob.php") -> list[dict[str, Any]]:
        return [entry for entry in self.sim.state.log() if entry["endpoint"] == endpoint]

    def broker_idle(self) -> bool:
        """No turn waiting in the Redis broker's queue and none delivered but unacknowledged."""
        return self.redis.llen(QUEUE) == 0 and self.redis.hlen("unacked") == 0


@pytest.fixture
def make_pipeline(
    redis_url: str, simulator: SimulatorServer, make_worker_env: Callable[..., dict[str, str]]
) -> Iterator[Callable[..., Pipeline]]:
    client = redis.Redis.from_url(redis_url)
    built: list[Pipeline] = []

    def make(**extra: str) -> Pipeline:
        env = make_worker_env(redis_url, simulator, **extra)
        app = create_api(Settings.from_env(env))
        token, _ = app.extensions["ukcancel"].tokens.create(ASTRO)
        pipeline = Pipeline(env, simulator, client, app, token)
        built.append(pipeline)
        return pipeline

    yield make
    for pipeline in built:
        pipeline.runtime.connection.close()
    client.close()


def history(command: dict[str, Any]) -> list[str]:
    return [entry["state"] for entry in command["history"]]


# ---- answers that come straight back ----------------------------------------------------------


def test_the_seed_guides_two_tuples(make_pipeline: Callable[..., Pipeline], worker_factory: Any) -> None:
    p = make_pipeline()
    worker_factory(p.env)
    first = p.result(p.submit(1001, ["LightCurve"]))
    assert first["state"] == "completed"
    assert first["result"] == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    second = p.result(p.submit(1001, "all"))
    assert second["result"] == [
        2,
        {"LightCurve": {"code": 1, "text": ALREADY_FINISHED}, "StandardPos": {"code": 0, "text": CANCELLED_OK}},
    ]
    assert second["attempts"] == 1 and history(second) == ["queued", "running", "completed"]
    assert p.sim.state.product_state(1001, "lc") == -4 and p.sim.state.product_state(1001, "psf") == -4


def test_partial_and_ok_0(make_pipeline: Callable[..., Pipeline], worker_factory: Any) -> None:
    p = make_pipeline()
    worker_factory(p.env)
    partial = p.submit(1002, ["lc", "StandardPos"])
    refused = p.submit(1004, ["LightCurve"])  # a job of other@example.org
    assert p.result(partial)["result"] == [
        2,
        {"LightCurve": {"code": 0, "text": CANCELLED_OK}, "StandardPos": {"code": 1, "text": ALREADY_FINISHED}},
    ]
    refused_command = p.result(refused)
    assert refused_command["result"] == [0, {"ERROR": "Job 1004 is not owned by user astro@example.org"}]
    assert refused_command["attempts"] == 1
    assert p.sim.state.product_state(1004, "lc") == 2


# ---- transient failures ----------------------------------------------------------------------


def test_503_twice_then_success(make_pipeline: Callable[..., Pipeline], worker_factory: Any) -> None:
    p = make_pipeline()
    worker_factory(p.env)
    p.sim.state.add_faults(Fault("http503", count=2))
    command = p.result(p.submit(1001, ["LightCurve"]))
    assert command["result"] == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert command["attempts"] == 3
    assert history(command) == ["queued", "running", "retrying", "running", "retrying", "running", "completed"]
    assert [c["status"] for c in p.calls()] == [503, 503, 200]


def test_garbage_truncated_and_no_ok_replies_then_success(
    make_pipeline: Callable[..., Pipeline], worker_factory: Any
) -> None:
    p = make_pipeline()
    worker_factory(p.env)
    cases = [
        # (fault, job, product, expected text): the server acts on a truncated reply's request,
        # so its retry hears "already finished" and the status check confirms the cancellation.
        ("garbled", 1002, "LightCurve", CANCELLED_OK),
        ("html200", 1002, "Spectrum", CANCELLED_OK),
        ("no_ok", 1002, "AstromPos", CANCELLED_OK),
        ("truncated", 1001, "LightCurve", CONFIRMED_CANCELLED_TEXT),
    ]
    for kind, job_id, product, text in cases:
        p.sim.state.add_faults(Fault(kind))
        command = p.result(p.submit(job_id, [product]))
        assert command["attempts"] == 2, kind
        assert command["result"] == [1, {product: {"code": 0, "text": text}}], kind
    assert [c["fault"] for c in p.calls()] == ["garbled", None, "html200", None, "no_ok", None, "truncated", None]
    assert len(p.calls("checkProductStatus.php")) == 1  # only the truncated (ambiguous) case


def test_read_timeouts_then_success(make_pipeline: Callable[..., Pipeline], worker_factory: Any) -> None:
    p = make_pipeline(UKCANCEL_UKSSDC_TIMEOUT_SECONDS="1")
    worker_factory(p.env)
    # Not processed: the retry's plain "cancelled" is the answer.
    p.sim.state.add_faults(Fault("read_timeout", seconds=3))
    plain = p.result(p.submit(1002, ["lc"]))
    assert plain["result"] == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert "read timeout" in (plain["last_error"] or "")
    # Processed before the timeout: the retry hears "could not be cancelled"; the check settles it.
    p.sim.state.add_faults(Fault("read_timeout_after_processing", seconds=3))
    settled = p.result(p.submit(1001, ["lc"]))
    assert settled["result"] == [1, {"LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT}}]
    assert settled["attempts"] == 2


def test_retries_exhausted_give_minus_1(make_pipeline: Callable[..., Pipeline], worker_factory: Any) -> None:
    p = make_pipeline(UKCANCEL_MAX_ATTEMPTS="3")
    worker_factory(p.env)
    p.sim.state.add_faults(Fault("http503", count=50))
    command = p.result(p.submit(1001, ["LightCurve"]))
    assert command["attempts"] == 3
    status, detail = command["result"]
    assert status == -1 and detail["ERROR"].startswith("gave up after 3 attempts: HTTP 503")
    assert len(p.calls()) == 3
    assert p.sim.state.product_state(1001, "lc") == 3


# ---- withdraw and long poll ------------------------------------------------------------------


def test_withdraw_before_a_worker_exists(make_pipeline: Callable[..., Pipeline], worker_factory: Any) -> None:
    p = make_pipeline()
    withdrawn = p.submit(1001, ["LightCurve"])
    response = p.app.test_client().delete(f"/v1/cancellations/{withdrawn}", headers=p.headers())
    assert response.status_code == 200 and response.get_json()["state"] == "aborted"
    assert p.redis.llen(QUEUE) == 1  # its turn is still in the broker
    worker_factory(p.env)
    wait_for(p.broker_idle, 15, "the worker to take the withdrawn command's turn")
    later = p.result(p.submit(1002, ["LightCurve"]))
    assert later["result"][0] == 1  # the worker was alive and working all along
    command = p.get(withdrawn)
    assert command["state"] == "aborted" and command["result"] is None and command["attempts"] == 0
    assert history(command) == ["queued", "aborted"]
    assert [c["body"]["JobID"] for c in p.calls()] == [1002]  # job 1001 never reached the UKSSDC
    assert p.sim.state.product_state(1001, "lc") == 3


def test_long_poll_returns_when_the_command_completes(
    make_pipeline: Callable[..., Pipeline], worker_factory: Any
) -> None:
    p = make_pipeline(UKCANCEL_UKSSDC_TIMEOUT_SECONDS="5")
    worker_factory(p.env)
    p.sim.state.add_faults(Fault("latency", seconds=1.5))
    command_id = p.submit(1001, ["LightCurve"])
    started = time.monotonic()
    command = p.get(command_id, wait=30)
    elapsed = time.monotonic() - started
    assert command["state"] == "completed"
    assert command["result"] == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert 1.4 <= elapsed < 15


# ---- bad input never reaches the queue -------------------------------------------------------

BAD_INPUT: list[tuple[bytes, int, str | None]] = [
    (b"{not json", 400, "/"),
    (b'{"job_id": 1001, "products": ["lc"]', 400, "/"),
    (b"[" * 20_000 + b"]" * 20_000, 400, "/"),
    (b"[]", 422, "/"),
    (b'{"products": ["lc"]}', 422, "/job_id"),
    (b'{"job_id": "1001"}', 422, "/job_id"),
    (b'{"job_id": 0}', 422, "/job_id"),
    (b'{"job_id": -7}', 422, "/job_id"),
    (b'{"job_id": true}', 422, "/job_id"),
    (b'{"job_id": 1001.5}', 422, "/job_id"),
    (b'{"job_id": 1001, "products": []}', 422, "/products"),
    (b'{"job_id": 1001, "products": ["lc", "Lightcurve"]}', 422, "/products"),
    (b'{"job_id": 1001, "products": "lc"}', 422, "/products"),
    (b'{"job_id": 1001, "user_id": "astro.example.org"}', 422, "/user_id"),
    (b'{"job_id": 1001, "what": "lc"}', 422, "/what"),
    (json.dumps({"job_id": 1001, "products": ["lc"] * 15_000}).encode(), 413, None),
]


def test_every_bad_input_is_a_problem_and_nothing_is_enqueued(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()
    client = p.app.test_client()
    for raw, status, pointer in BAD_INPUT:
        response = client.post(
            "/v1/cancellations", data=raw, headers={**p.headers(), "Content-Type": "application/json"}
        )
        assert response.status_code == status, (raw[:60], response.get_data(as_text=True))
        assert response.mimetype == "application/problem+json"
        body = response.get_json(force=True)
        if pointer is not None:
            assert pointer in [e["pointer"] for e in body["errors"]], body
    assert p.redis.keys(keys.command("*")) == []
    assert p.redis.zcard(keys.user_commands(ASTRO)) == 0
    assert p.redis.llen(QUEUE) == 0  # no turn sent to the broker
    assert p.sim.state.log() == []


# ---- a worker killed mid-command --------------------------------------------------------------


def test_sigkill_mid_command_is_taken_over_and_completes_exactly_once(
    make_pipeline: Callable[..., Pipeline], worker_factory: Any
) -> None:
    # The killed worker's broker message would come back only after the visibility timeout;
    # its command comes back as soon as its lease lapses, through the schedule, not the broker.
    p = make_pipeline(UKCANCEL_LEASE_SECONDS="2", UKCANCEL_UKSSDC_TIMEOUT_SECONDS="10")
    first = worker_factory(p.env, name="doomed")
    p.sim.state.add_faults(Fault("latency", seconds=3))  # holds the call, then cancels
    command_id = p.submit(1001, ["LightCurve"])

    wait_for(lambda: p.get(command_id)["state"] == "running" and p.calls(), 10, "the call to be in flight")
    assert p.redis.zscore(keys.LEASES, command_id) is not None
    first.kill()
    assert first.process.poll() is not None

    # The dead worker's request still reaches the server and cancels the light curve.
    wait_for(lambda: p.calls()[0]["t_done"] is not None, 10, "the held call to be processed")
    assert p.sim.state.product_state(1001, "lc") == -4
    assert p.get(command_id)["state"] == "running"  # nobody recorded the outcome
    rescuer = worker_factory(p.env, name="rescuer")

    command = p.result(command_id, timeout=20)
    assert command["state"] == "completed"
    assert command["result"] == [1, {"LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT}}]
    # The killed run's request went out, but it died before counting it: an attempt is counted only
    # for a request known to have been made, so a crash never uses up the command's budget.
    assert command["attempts"] == 1
    assert history(command) == ["queued", "running", "running", "completed"]
    assert history(command).count("completed") == 1
    assert len(p.calls()) == 2 and len(p.calls("checkProductStatus.php")) == 1
    assert "taking it over" in rescuer.log()
    wait_for(lambda: p.redis.zcard(keys.LEASES) == 0, 5, "the lease to be released after completion")

    # Duplicate turns change nothing: each finds nothing to claim and ends.
    before = p.redis.hgetall(keys.command(command_id))
    empty_before = rescuer.log().count("'command': None")
    p.runtime.dispatch.send_turns(3)
    wait_for(lambda: rescuer.log().count("'command': None") >= empty_before + 3, 15, "the duplicate turns")
    assert p.redis.hgetall(keys.command(command_id)) == before
    assert len(p.calls()) == 2
