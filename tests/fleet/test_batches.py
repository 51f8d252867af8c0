"""`/v1/batches` through the API, an embedded store and worker, and the UKSSDC simulator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from support import ApiClient  # tests/support.py

from ukcancel import keys
from ukcancel.assemble import create_runtime
from ukcancel.batch import EXPANDING
from ukcancel.fleet import FleetGate, Wait
from ukcancel.retry import Reschedule
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.worker.all_active import ActiveJobsExpansion
from ukcancel.worker.embedded import EmbeddedWorker
from ukcancel.worker.ukssdc import UkssdcClient

ASTRO = "astro@example.org"
OTHER = "other@example.org"


class Api(ApiClient):
    def post_batch(self, body: Any, user: str = ASTRO, admin: bool = False) -> Any:
        return self.post("/v1/batches", body, user, admin)


def settings_for(simulator: SimulatorServer, **changes: Any) -> Settings:
    return Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05, retry_max_delay_seconds=0.5,
                    fleet_rate_per_second=50, **changes)


@pytest.fixture
def api(simulator: SimulatorServer) -> Iterator[Api]:
    runtime = create_runtime(settings_for(simulator))
    with EmbeddedWorker(runtime):
        yield Api(runtime)


@pytest.fixture
def idle_api(simulator: SimulatorServer) -> Api:
    """The API without a worker: what is accepted stays queued."""
    return Api(create_runtime(settings_for(simulator)))


def stored_keys(runtime: Runtime) -> list[str]:
    # Tokens, and the API process's own presence (`ukcancel.presence`), are not what a request stored.
    return sorted(k.decode() for k in runtime.connection.keys("ukcancel:*")
                  if not k.startswith((b"ukcancel:token", b"ukcancel:processes")))


# -- validation --------------------------------------------------------------------------------------
def test_item_errors_are_reported_by_index_and_nothing_is_enqueued(idle_api: Api) -> None:
    items: list[Any] = [{"job_id": 1001, "products": ["LightCurve"]} for _ in range(6)]
    items[1] = {"job_id": "1002"}
    items[3] = {"job_id": 0, "products": ["Nonsense"]}
    items[5] = {"job_id": 1003, "products": [], "callback_url": "http://example.org/"}
    before = stored_keys(idle_api.runtime)

    response = idle_api.post_batch({"items": items})

    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    pointers = sorted(error["pointer"] for error in response.json["errors"])
    assert pointers == ["/items/1/job_id", "/items/3/job_id", "/items/3/products", "/items/5/callback_url",
                        "/items/5/products"]
    assert stored_keys(idle_api.runtime) == before
    assert idle_api.runtime.schedule.depth() == {}


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/"),
        ({"items": []}, "/items"),
        ({"items": [{"job_id": 1}], "all_active": True}, "/"),
        ({"items": {"job_id": 1}}, "/items"),
        ({"all_active": False}, "/"),
        ({"all_active": True, "user_id": "not-an-email"}, "/user_id"),
        ({"items": [{"job_id": 1}], "extra": 1}, "/extra"),
        ({"items": [{"job_id": 1}] * 10_001}, "/items"),
    ],
)
def test_malformed_batches_are_422_problems(idle_api: Api, body: Any, pointer: str) -> None:
    response = idle_api.post_batch(body)
    assert response.status_code == 422, response.json
    assert pointer in [error["pointer"] for error in response.json["errors"]]
    assert idle_api.runtime.schedule.depth() == {}


def test_a_body_that_is_not_json_is_415_and_a_bare_list_is_422(idle_api: Api) -> None:
    headers = {"Authorization": f"Bearer {idle_api.token(ASTRO)}"}
    assert idle_api.client.post("/v1/batches", data="job_id=1", headers=headers).status_code == 415
    assert idle_api.post_batch([{"job_id": 1}]).status_code == 422


def test_another_users_items_need_an_admin_token(idle_api: Api) -> None:
    assert idle_api.post_batch({"items": [{"job_id": 1004}], "user_id": OTHER}).status_code == 403
    assert idle_api.post_batch({"items": [{"job_id": 1004}], "user_id": OTHER}, admin=True).status_code == 202


# -- accepting ---------------------------------------------------------------------------------------
def test_accepting_ten_thousand_items_is_one_pipeline_and_a_turn_per_lane(
    redis_url: str, simulator: SimulatorServer, record_property: Any
) -> None:
    runtime = create_runtime(Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url))
    api = Api(runtime)
    items = [{"job_id": 100_000 + i, "products": ["LightCurve", "StandardPos"] if i % 2 else "all"}
             for i in range(10_000)]
    api.post_batch({"items": items[:10]})  # warm-up: scripts loaded, connections open
    runtime.connection.delete("ukcancel")  # the Celery queue of the warm-up's turns
    runtime.schedule.set_turns_on_their_way(0)  # as the reconciler would, seeing that queue empty
    executed: list[int] = []
    original = type(runtime.connection.pipeline(transaction=True)).execute

    def counting_execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        executed.append(len(pipe.command_stack))
        return original(pipe, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(runtime.connection.pipeline(transaction=True)), "execute", counting_execute)
        began = time.perf_counter()
        response = api.post_batch({"items": items})
        elapsed = time.perf_counter() - began

    record_property("accept_10000_items_seconds", round(elapsed, 3))  # measured, not asserted: see ops/bench
    assert response.status_code == 202
    assert response.json["total"] == 10_000 and response.json["state"] == "running"
    assert response.headers["Location"] == f"/v1/batches/{response.json['id']}"
    assert len([n for n in executed if n > 1000]) == 1  # every record in one pipeline
    assert runtime.schedule.depth() == {ASTRO: 10_010}
    # A turn per lane, not per item: running turns send their successors while work waits.
    assert runtime.connection.llen("ukcancel") == runtime.settings.dispatch_lanes
    assert runtime.connection.llen(keys.batch_items(response.json["id"])) == 10_000


# -- progress, results, long poll ------------------------------------------------------------------------
def test_a_batch_runs_to_its_results_and_the_long_poll_returns_when_done(api: Api) -> None:
    response = api.post_batch({"items": [{"job_id": 1001, "products": ["lc"]}, {"job_id": 1003},
                                   {"job_id": 1004, "products": "all"}]})
    assert response.status_code == 202

    began = time.monotonic()
    view = api.get(response.headers["Location"] + "?wait=30").json
    assert time.monotonic() - began < 20

    assert view["state"] == "completed"
    assert view["total"] == 3
    assert view["counts"] == {"queued": 0, "running": 0, "retrying": 0, "completed": 3, "aborted": 0}
    assert view["results"] == {"-1": 0, "0": 1, "1": 1, "2": 1}
    assert view["done_fraction"] == 1.0 and view["eta_seconds"] is None
    assert [(i["index"], i["job_id"], i["state"]) for i in view["items"]] == [
        (0, 1001, "completed"), (1, 1003, "completed"), (2, 1004, "completed")]
    assert view["items"][0]["result"] == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]
    assert view["items"][2]["result"][0] == 0  # not astro's job
    command = api.get(f"/v1/cancellations/{view['items'][0]['command_id']}").json
    assert command["batch_id"] == view["id"]


def test_items_are_paginated_with_a_cursor(idle_api: Api) -> None:
    batch_id = idle_api.post_batch({"items": [{"job_id": 2000 + i} for i in range(7)]}).json["id"]
    seen, cursor = [], "0"
    while cursor is not None:
        page = idle_api.get(f"/v1/batches/{batch_id}?limit=3&cursor={cursor}").json
        seen.extend(item["index"] for item in page["items"])
        cursor = page["next_cursor"]
    assert seen == list(range(7))
    view = idle_api.get(f"/v1/batches/{batch_id}").json
    assert view["state"] == "running" and view["done_fraction"] == 0.0
    assert view["eta_seconds"] == pytest.approx(7 * 2 / 50, abs=0.1)  # "all": list + cancel each
    assert idle_api.get(f"/v1/batches/{batch_id}?limit=0").status_code == 422
    assert idle_api.get(f"/v1/batches/{batch_id}?cursor=-1").status_code == 422
    assert idle_api.get(f"/v1/batches/{batch_id}?wait=61").status_code == 422


def test_a_long_poll_on_an_unfinished_batch_returns_after_the_wait(idle_api: Api) -> None:
    batch_id = idle_api.post_batch({"items": [{"job_id": 1001}]}).json["id"]
    began = time.monotonic()
    view = idle_api.get(f"/v1/batches/{batch_id}?wait=1").json
    assert 0.9 <= time.monotonic() - began < 5
    assert view["state"] == "running"


def test_eta_accounts_for_other_users_waiting_commands(idle_api: Api) -> None:
    idle_api.post_batch({"items": [{"job_id": 1004, "products": ["lc"]}] * 30}, user=OTHER)
    batch_id = idle_api.post_batch({"items": [{"job_id": 1001, "products": ["lc"]}] * 10}).json["id"]
    # 10 own calls, and the other user gets a turn for each of them: 20 calls at 50/s.
    assert idle_api.get(f"/v1/batches/{batch_id}").json["eta_seconds"] == pytest.approx(0.4, abs=0.05)


# -- isolation and withdrawal -------------------------------------------------------------------------------
def test_another_users_batch_is_404_and_an_admin_sees_it(idle_api: Api) -> None:
    batch_id = idle_api.post_batch({"items": [{"job_id": 1001}]}).json["id"]
    assert idle_api.get(f"/v1/batches/{batch_id}", user=OTHER).status_code == 404
    assert idle_api.delete(f"/v1/batches/{batch_id}", user=OTHER).status_code == 404
    assert idle_api.get(f"/v1/batches/{batch_id}", user=OTHER, admin=True).status_code == 200
    assert idle_api.get("/v1/batches/not-an-id").status_code == 404
    assert idle_api.client.get(f"/v1/batches/{batch_id}").status_code == 401


def test_delete_withdraws_every_item_not_started(idle_api: Api) -> None:
    runtime = idle_api.runtime
    batch_id = idle_api.post_batch({"items": [{"job_id": 2001 + i} for i in range(4)]}).json["id"]
    claim = runtime.schedule.claim("a-worker-turn")  # a worker takes the first item and starts it
    assert claim is not None and claim.command_id == runtime.batches.command_ids(batch_id)[0]
    runtime.registry.start_attempt(claim.command_id)

    view = idle_api.delete(f"/v1/batches/{batch_id}").json

    assert view["counts"]["aborted"] == 3 and view["counts"]["running"] == 1
    assert view["results"]["-1"] == 3
    assert [item["result"][0] if item["result"] else None for item in view["items"]] == [None, -1, -1, -1]
    # One results-stream entry each, written by the transition that withdrew it.
    results = runtime.connection.xrange("ukcancel:results")
    heard = [fields[b"command_id"].decode() for _, fields in results]
    assert sorted(heard) == sorted(runtime.batches.command_ids(batch_id)[1:])
    assert {fields[b"state"] for _, fields in results} == {b"aborted"}
    assert runtime.schedule.depth().get(ASTRO, 0) == 0  # withdrawn commands left the line


# -- all_active --------------------------------------------------------------------------------------------
def test_all_active_cancels_exactly_the_active_products_of_the_users_jobs(api: Api, simulator: SimulatorServer) -> None:
    response = api.post_batch({"all_active": True})
    assert response.status_code == 202
    assert response.json["state"] == EXPANDING and response.json["total"] == 0

    view = api.get(response.headers["Location"] + "?wait=30").json

    assert view["state"] == "completed"
    assert {item["job_id"]: item["products"] for item in view["items"]} == {
        1001: ["LightCurve", "StandardPos"],
        1002: ["LightCurve", "Spectrum", "AstromPos"],  # its StandardPos (4) is finished; 1003 is all finished
    }
    assert view["results"]["1"] == 2
    assert simulator.state.product_state(1002, "psf") == 4
    assert all(simulator.state.product_state(1001, s) == -4 for s in ("lc", "psf"))
    endpoints = [entry["endpoint"] for entry in simulator.state.log()]
    assert endpoints.count("listOldJobs.php") == 1 and endpoints.count("checkProductStatus.php") == 3


def test_all_active_finds_products_that_listoldjobs_cannot_flag(api: Api) -> None:
    view = api.get(api.post_batch({"all_active": True}, user=OTHER).headers["Location"] + "?wait=30", user=OTHER).json
    assert {item["job_id"]: item["products"] for item in view["items"]} == {
        1004: ["LightCurve", "Spectrum", "Image"],
        1005: ["StandardPos", "EnhancedPos", "SourceDet"],
    }


def test_all_active_for_an_unknown_user_fails_the_batch(api: Api) -> None:
    location = api.post_batch({"all_active": True}, user="nobody@example.org").headers["Location"]
    view = api.get(location + "?wait=30", user="nobody@example.org").json
    assert view["state"] == "failed"
    assert "not recognised" in view["error"]
    assert view["items"] == [] and view["eta_seconds"] is None


class ClosedGate(FleetGate):
    def acquire(self, max_wait: float | None = None) -> Wait:  # type: ignore[override]
        return Wait(1.5, "fleet rate limit reached")


def test_the_expansion_takes_a_permit_for_every_call_and_carries_on_after_a_reschedule(
    simulator: SimulatorServer,
) -> None:
    runtime = create_runtime(settings_for(simulator), fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    runtime.schedule.dispatch = lambda count: None  # no worker here: the expansion is run by hand
    batch_id = Api(runtime).post_batch({"all_active": True}).json["id"]
    client = UkssdcClient(simulator.base_url, "1.12", 5, 5)

    with pytest.raises(Reschedule) as later:
        ActiveJobsExpansion(runtime, batch_id, ClosedGate(runtime.connection, runtime.settings), client).run()
    assert later.value.countdown >= 1.5
    assert simulator.state.log() == []  # no permit, no call

    gate = FleetGate(runtime.connection, runtime.settings)
    calls = 0

    class OneCallGate(FleetGate):
        def acquire(self, max_wait: float | None = None):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return gate.acquire(max_wait) if calls <= 2 else Wait(1.0, "fleet rate limit reached")

    with pytest.raises(Reschedule):
        ActiveJobsExpansion(runtime, batch_id, OneCallGate(runtime.connection, runtime.settings), client).run()
    assert [e["endpoint"] for e in simulator.state.log()] == ["listOldJobs.php", "checkProductStatus.php"]

    assert ActiveJobsExpansion(runtime, batch_id, gate, client).run() == 2
    endpoints = [e["endpoint"] for e in simulator.state.log()]
    assert endpoints == ["listOldJobs.php"] + ["checkProductStatus.php"] * 3  # nothing asked twice
    assert runtime.batches.get(batch_id).state == "running"  # type: ignore[union-attr]
    assert ActiveJobsExpansion(runtime, batch_id, gate, client).run() is None  # a redelivery does nothing
    assert runtime.schedule.depth() == {ASTRO: 2}
