"""`/v1/jobs` and `/v1/plans` through the API, an embedded store and worker, and the UKSSDC simulator.

What the UKSSDC was asked is read from the simulator's request log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import ApiClient  # tests/support.py

from ukcancel import keys
from ukcancel.assemble import create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.worker.embedded import EmbeddedWorker
from ukcancel.worker.tasks import celery_of

ASTRO = "astro@example.org"  # jobs 1001 (lc 3, psf 2), 1002 (lc 2, spec 2, psf 4, xastrom 5), 1003 (lc 4, spec 4)
OTHER = "other@example.org"  # jobs 1004, 1005
PROBLEM = "application/problem+json"


class Api(ApiClient):
    def jobs(self, user: str = ASTRO, **params: Any) -> dict[str, Any]:
        response = self.get("/v1/jobs", user, wait=30, **params)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json

    def plan(self, selection: dict[str, Any], user: str = ASTRO) -> dict[str, Any]:
        response = self.post("/v1/plans", selection, user)
        assert response.status_code == 202, response.get_data(as_text=True)
        assert response.json["state"] in ("computing", "ready")
        plan = self.get(response.headers["Location"], user, wait=30).json
        assert plan["state"] == "ready", plan
        return plan


def settings_for(simulator: SimulatorServer, **changes: Any) -> Settings:
    return Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05, retry_max_delay_seconds=0.5,
                    fleet_rate_per_second=50, **changes)


def working(runtime: Runtime) -> EmbeddedWorker:
    """An embedded worker for `runtime`, after dropping what earlier tests left in the in-memory broker
    (which every embedded runtime of the process shares): these tests count the UKSSDC's calls."""
    celery_of(runtime).control.purge()
    return EmbeddedWorker(runtime)


@pytest.fixture
def api(simulator: SimulatorServer) -> Iterator[Api]:
    runtime = create_runtime(settings_for(simulator))
    with working(runtime):
        yield Api(runtime)


@pytest.fixture
def idle_api(simulator: SimulatorServer) -> Api:
    """No worker: refreshes are asked for and never done. They are kept out of the in-memory broker,
    which every embedded runtime of this process shares: a later test's worker would run them."""
    runtime = create_runtime(settings_for(simulator))
    runtime.dispatch.refresh_jobs = lambda user_id: None  # type: ignore[method-assign]
    return Api(runtime)


def calls(simulator: SimulatorServer, endpoint: str | None = None) -> list[dict[str, Any]]:
    return [e for e in simulator.state.log() if endpoint is None or e["endpoint"] == endpoint]


def by_id(view: dict[str, Any]) -> dict[int, dict[str, int | None]]:
    return {job["job_id"]: {p["name"]: p["state"] for p in job["products"]} for job in view["jobs"]}


# -- GET /v1/jobs -------------------------------------------------------------------------------------
def test_jobs_lists_each_products_state_and_text_and_when_it_was_read(api: Api, simulator: SimulatorServer) -> None:
    view = api.jobs()
    assert by_id(view) == {
        1001: {"LightCurve": 3, "StandardPos": 2},
        1002: {"LightCurve": 2, "Spectrum": 2, "StandardPos": 4, "AstromPos": 5},
        1003: {"LightCurve": 4, "Spectrum": 4},
    }
    job = next(j for j in view["jobs"] if j["job_id"] == 1001)
    assert job["name"] == "GRB 201221A" and job["submitted"] == "2026-11-20 10:15:00"
    assert {p["name"]: p["state_text"] for p in job["products"]} == {"LightCurve": "Running", "StandardPos": "Queued"}
    assert job["read_at"].endswith("+00:00") and 0 <= job["age_seconds"] < 30
    assert view["fresh"] is True and view["refreshing"] is False and view["error"] is None
    assert view["total"] == 3 and view["user_id"] == ASTRO
    assert len(calls(simulator, "listOldJobs.php")) == 1
    assert len(calls(simulator, "checkProductStatus.php")) == 3


def test_a_jobs_status_is_not_read_again_within_the_ttl_and_a_finished_job_never(simulator: SimulatorServer) -> None:
    runtime = create_runtime(settings_for(simulator, job_status_ttl_seconds=1.0))
    with working(runtime):
        api = Api(runtime)
        api.jobs()
        for _ in range(5):
            assert api.jobs()["fresh"] is True  # within the TTL: nothing asked
        assert len(calls(simulator)) == 4
        time.sleep(1.1)
        stale = api.get("/v1/jobs").json  # answered from the cache at once, a refresh asked for
        assert by_id(stale)[1001] == {"LightCurve": 3, "StandardPos": 2}
        assert stale["age_seconds"] >= 1.0
        simulator.state.set_product_state(1001, "lc", 4)
        fresh = api.jobs()
    assert by_id(fresh)[1001]["LightCurve"] == 4
    status_calls = [e["body"]["JobID"] for e in calls(simulator, "checkProductStatus.php")]
    # 1003 has only completed products: read once, never again; 1001 and 1002 twice.
    assert sorted(status_calls) == [1001, 1001, 1002, 1002, 1003]
    assert len(calls(simulator, "listOldJobs.php")) == 2


def test_refreshes_are_deduplicated_per_user(idle_api: Api) -> None:
    sent: list[str] = []
    idle_api.runtime.dispatch.refresh_jobs = sent.append  # type: ignore[method-assign]
    for _ in range(5):
        response = idle_api.get("/v1/jobs")
        assert response.status_code == 200
        assert response.json == {"user_id": ASTRO, "listed_at": None, "age_seconds": None, "refreshing": True,
                                 "fresh": False, "error": None, "total": 0, "jobs": []}
    idle_api.get("/v1/jobs", user=OTHER)
    assert sent == [ASTRO, OTHER]
    assert idle_api.runtime.connection.ttl(keys.jobs_refresh(ASTRO)) > 0  # a lost refresh is asked for again


def test_the_long_poll_returns_after_the_wait_when_no_refresh_ends(idle_api: Api) -> None:
    started = time.monotonic()
    view = idle_api.get("/v1/jobs", wait=1).json
    assert 1.0 <= time.monotonic() - started < 5
    assert view["refreshing"] is True and view["jobs"] == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"name": "grb 20*"}, {1001}),
        ({"name": "*J1727*"}, {1002}),
        ({"name": "V404 Cy?"}, {1003}),
        ({"submitted_after": "2026-11-20T00:00:00Z"}, {1001, 1002}),
        ({"submitted_before": "2026-11-20T10:15:00Z"}, {1003}),
        ({"submitted_after": "2026-11-19", "submitted_before": "2026-11-21T00:00:00"}, {1001}),
        ({"job_ids": "1001,1003"}, {1001, 1003}),
        ({"products": "spec"}, {1002, 1003}),
        ({"state": "active"}, {1001, 1002}),
        ({"state": "finished"}, {1002, 1003}),
        ({"state": "active", "products": "Spectrum"}, {1002}),
        ({"name": "GRB*", "state": "finished"}, set()),
    ],
)
def test_jobs_filters(api: Api, params: dict[str, str], expected: set[int]) -> None:
    assert set(by_id(api.jobs(**params))) == expected


def test_product_filters_keep_only_the_matching_products(api: Api, simulator: SimulatorServer) -> None:
    simulator.state.cancel_products(1002, ["lc"])
    assert by_id(api.jobs(state="active")) == {
        1001: {"LightCurve": 3, "StandardPos": 2}, 1002: {"Spectrum": 2, "AstromPos": 5},
    }
    assert by_id(api.jobs(state="cancelled")) == {1002: {"LightCurve": -4}}
    assert by_id(api.jobs(products="lc,psf", job_ids="1002")) == {1002: {"LightCurve": -4, "StandardPos": 4}}


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"state": "running"}, "/state"),
        ({"submitted_after": "yesterday"}, "/submitted_after"),
        ({"products": "lc,Lightcurve"}, "/products"),
        ({"job_ids": "1001,x"}, "/job_ids"),
        ({"job_ids": "0"}, "/job_ids"),
        ({"submitted_after": "2026-11-21", "submitted_before": "2026-11-20"}, "/submitted_before"),
        ({"wait": "61"}, "/wait"),
        ({"colour": "red"}, "/colour"),
        ({"user_id": "not-an-email"}, "/user_id"),
    ],
)
def test_bad_filters_are_422_problems(idle_api: Api, params: dict[str, str], pointer: str) -> None:
    response = idle_api.get("/v1/jobs", **params)
    assert response.status_code == 422
    assert response.mimetype == PROBLEM
    assert pointer in [error["pointer"] for error in response.json["errors"]]


def test_an_admin_may_read_any_users_jobs_a_user_only_their_own(api: Api) -> None:
    assert set(by_id(api.jobs(OTHER))) == {1004, 1005}
    admin = api.get("/v1/jobs", "ops@example.org", admin=True, user_id=OTHER, wait=30)
    assert admin.status_code == 200 and set(by_id(admin.json)) == {1004, 1005}
    refused = api.get("/v1/jobs", ASTRO, user_id=OTHER)
    assert refused.status_code == 403 and refused.mimetype == PROBLEM


def test_an_unknown_user_gets_the_ukssdcs_error(api: Api) -> None:
    view = api.jobs("nobody@example.org")
    assert view["jobs"] == [] and "not recognised" in view["error"]


# -- plans ---------------------------------------------------------------------------------------------
def test_a_plan_names_exactly_the_active_matching_pairs_and_why_others_are_left_out(api: Api) -> None:
    plan = api.plan({"submitted_after": "2026-11-19T00:00:00Z"})
    assert plan["pairs"] == [
        {"job_id": 1002, "name": "Swift J1727.8-1613", "products": ["LightCurve", "Spectrum", "AstromPos"]},
        {"job_id": 1001, "name": "GRB 201221A", "products": ["LightCurve", "StandardPos"]},
    ]
    assert plan["left_out"] == [
        {"job_id": 1003, "name": "V404 Cyg", "reason": "submitted before 2026-11-19T00:00:00Z"},
    ]
    assert plan["counts"] == {"jobs": 2, "products": 5, "left_out": 1}
    assert plan["selection"] == {"submitted_after": "2026-11-19T00:00:00Z"}
    assert plan["expires_at"] > plan["computed_at"] and plan["expired"] is False and plan["batch_id"] is None


def test_plan_selections_filter_by_name_products_and_ids(api: Api) -> None:
    plan = api.plan({"products": ["lc", "spec"], "job_ids": [1001, 1002, 1003]})
    assert {p["job_id"]: p["products"] for p in plan["pairs"]} == {1001: ["LightCurve"], 1002: ["LightCurve", "Spectrum"]}
    reasons = {j["job_id"]: j["reason"] for j in api.plan({"name": "GRB*"})["left_out"]}
    assert reasons == {1002: "name does not match 'GRB*'", 1003: "name does not match 'GRB*'"}
    finished = {j["job_id"]: j["reason"] for j in api.plan({"job_ids": [1003, 1001], "products": ["Spectrum"]})["left_out"]}
    assert finished == {
        1001: "asked for none of Spectrum",
        1002: "not one of the job ids asked for",
        1003: "no active product to cancel (Spectrum Complete)",
    }


def test_applying_a_plan_makes_one_batch_of_exactly_its_pairs(api: Api, simulator: SimulatorServer) -> None:
    plan = api.plan({"name": "GRB*"})
    first = api.post(f"/v1/plans/{plan['id']}/apply")
    assert first.status_code == 202, first.get_data(as_text=True)
    again = api.post(f"/v1/plans/{plan['id']}/apply")
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    assert first.headers["Location"] == f"/v1/batches/{first.json['id']}"
    assert len(api.runtime.connection.keys("ukcancel:batch:*:items")) == 1
    batch = api.get(first.headers["Location"], wait=30).json
    assert batch["state"] == "completed"
    assert [(i["job_id"], i["products"]) for i in batch["items"]] == [(1001, ["LightCurve", "StandardPos"])]
    assert simulator.state.product_state(1001, "lc") == -4
    assert simulator.state.product_state(1002, "lc") == 2  # not in the plan: untouched
    assert api.get(f"/v1/plans/{plan['id']}").json["batch_id"] == first.json["id"]


def test_an_expired_plan_is_a_409_problem(simulator: SimulatorServer) -> None:
    runtime = create_runtime(settings_for(simulator, plan_ttl_seconds=0.5))
    with working(runtime):
        api = Api(runtime)
        plan = api.plan({})
        time.sleep(0.6)
        response = api.post(f"/v1/plans/{plan['id']}/apply")
    assert response.status_code == 409 and response.mimetype == PROBLEM
    assert "expired" in response.json["detail"]
    assert api.get(f"/v1/plans/{plan['id']}").json["expired"] is True
    assert runtime.connection.keys("ukcancel:batch:*") == []


def test_a_plan_with_nothing_to_cancel_cannot_be_applied(api: Api) -> None:
    plan = api.plan({"job_ids": [1003]})
    assert plan["pairs"] == [] and plan["counts"]["jobs"] == 0
    response = api.post(f"/v1/plans/{plan['id']}/apply")
    assert response.status_code == 409 and "no active product" in response.json["detail"]


def test_a_computing_plan_cannot_be_applied_yet(idle_api: Api) -> None:
    created = idle_api.post("/v1/plans", {})
    assert created.json["state"] == "computing"
    response = idle_api.post(f"/v1/plans/{created.json['id']}/apply")
    assert response.status_code == 409 and "computing" in response.json["detail"]


def test_another_users_plan_is_404_and_an_admin_sees_it(api: Api) -> None:
    plan = api.plan({})
    for method, path in (("get", f"/v1/plans/{plan['id']}"), ("post", f"/v1/plans/{plan['id']}/apply")):
        response = getattr(api, method)(path, user=OTHER)
        assert response.status_code == 404 and response.mimetype == PROBLEM
    assert api.get("/v1/plans/not-a-plan").status_code == 404
    assert api.get(f"/v1/plans/{plan['id']}", "ops@example.org", admin=True).json["user_id"] == ASTRO
    assert api.runtime.connection.keys("ukcancel:batch:*") == []


def test_a_plan_for_someone_else_needs_an_admin_token(api: Api) -> None:
    assert api.post("/v1/plans", {"user_id": OTHER}).status_code == 403
    created = api.post("/v1/plans", {"user_id": OTHER}, "ops@example.org", admin=True)
    plan = api.get(created.headers["Location"], "ops@example.org", admin=True, wait=30).json
    assert {p["job_id"] for p in plan["pairs"]} == {1004, 1005}


def test_a_plan_for_a_user_the_ukssdc_does_not_know_fails(api: Api, simulator: SimulatorServer) -> None:
    for _ in range(2):  # the second within the TTL: the refusal is remembered, not asked again
        created = api.post("/v1/plans", {}, "nobody@example.org")
        plan = api.get(created.headers["Location"], "nobody@example.org", wait=30).json
        assert plan["state"] == "failed" and "not recognised" in plan["error"]
    assert len(calls(simulator, "listOldJobs.php")) == 1


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"state": "queued"}, "/state"),
        ({"products": []}, "/products"),
        ({"job_ids": [True]}, "/job_ids"),
        ({"job_ids": "1001,abc"}, "/job_ids"),
        ({"submitted_before": "not a date"}, "/submitted_before"),
        ({"what": "all"}, "/what"),
    ],
)
def test_bad_selections_are_422_problems(idle_api: Api, body: dict[str, Any], pointer: str) -> None:
    response = idle_api.post("/v1/plans", body)
    assert response.status_code == 422 and response.mimetype == PROBLEM
    assert pointer in [error["pointer"] for error in response.json["errors"]]
    assert idle_api.runtime.connection.keys("ukcancel:plan:*") == []


def test_a_plan_body_must_be_json(idle_api: Api) -> None:
    response = idle_api.client.post("/v1/plans", data="name=GRB", headers={
        **idle_api.headers(ASTRO, False), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and response.mimetype == PROBLEM
