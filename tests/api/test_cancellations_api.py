"""The HTTP API of cancel commands, through Flask's test client on an embedded runtime.

The store is fakeredis and the queue's dispatch is a recorder, so "nothing was enqueued" can be
checked exactly: no record, no place in line, no turn sent to the broker.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ukcancel import keys
from ukcancel.assemble import create_api, create_runtime
from ukcancel.command import COMPLETED, QUEUED, CommandState
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings

ASTRO = "astro@example.org"
OTHER = "other@example.org"
PROBLEM = "application/problem+json"
RECORD_FIELDS = {
    "id", "job_id", "user_id", "products", "state", "attempts", "last_error",
    "created_at", "updated_at", "result", "history", "submitted_by", "batch_id",
}


@dataclass
class Api:
    app: Flask
    client: FlaskClient
    runtime: Runtime
    token: str
    dispatched: list[int] = field(default_factory=list)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def post(self, body: Any = None, *, data: str | bytes | None = None, token: str | None = None,
             content_type: str = "application/json", headers: dict[str, str] | None = None) -> Any:
        payload = data if data is not None else json.dumps(body)
        return self.client.post(
            "/v1/cancellations",
            data=payload,
            headers={**self.auth(token), "Content-Type": content_type, **(headers or {})},
        )

    def submit(self, body: dict[str, Any], token: str | None = None) -> str:
        response = self.post(body, token=token)
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.get_json()["id"]

    def get(self, command_id: str, query: str = "", token: str | None = None) -> Any:
        return self.client.get(f"/v1/cancellations/{command_id}{query}", headers=self.auth(token))

    def delete(self, command_id: str, token: str | None = None) -> Any:
        return self.client.delete(f"/v1/cancellations/{command_id}", headers=self.auth(token))

    def assert_nothing_enqueued(self) -> None:
        connection = self.runtime.connection
        assert connection.keys(keys.command("*")) == []
        assert connection.zcard(keys.user_commands(ASTRO)) == 0
        assert self.runtime.schedule.depth() == {}
        assert self.dispatched == []


def build_api() -> Api:
    runtime = create_runtime(Settings(), connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    app = create_api(runtime=runtime)
    token, _ = runtime.tokens.create(ASTRO)
    api = Api(app, app.test_client(), runtime, token)
    runtime.schedule.dispatch = api.dispatched.append
    return api


@pytest.fixture
def api() -> Iterator[Api]:
    built = build_api()
    yield built
    built.runtime.connection.close()


def problem(response: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 body of an error response, checking its framing."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["title"] and body["type"] == "about:blank"
    return body


def pointers(body: dict[str, Any]) -> list[str]:
    return [entry["pointer"] for entry in body.get("errors") or []]


# ---- accepted requests -----------------------------------------------------------------------


def test_post_answers_202_with_location_and_stores_a_queued_command(api: Api) -> None:
    response = api.post({"job_id": 1001, "user_id": ASTRO, "products": ["lc", "LightCurve", "StandardPos"]})
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"id", "state"} and body["state"] == QUEUED
    assert response.headers["Location"].endswith(f"/v1/cancellations/{body['id']}")
    stored = api.runtime.registry.get(body["id"])
    assert stored is not None
    assert stored.products == ["LightCurve", "StandardPos"]  # long names, duplicates collapsed
    assert (stored.job_id, stored.user_id, stored.state) == (1001, ASTRO, QUEUED)
    assert api.dispatched == [1]
    assert api.runtime.schedule.depth() == {ASTRO: 1}


def test_products_default_to_all_and_user_to_the_tokens(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    stored = api.runtime.registry.get(command_id)
    assert stored is not None and stored.products == "all" and stored.user_id == ASTRO


def test_get_returns_every_documented_field(api: Api) -> None:
    command_id = api.submit({"job_id": 1001, "products": ["psf"]})
    response = api.get(command_id)
    assert response.status_code == 200
    body = response.get_json()
    assert RECORD_FIELDS <= set(body)
    assert body["id"] == command_id and body["job_id"] == 1001 and body["user_id"] == ASTRO
    assert body["products"] == ["StandardPos"]
    assert body["state"] == QUEUED and body["attempts"] == 0
    assert body["result"] is None and body["last_error"] is None and body["batch_id"] is None
    assert [h["state"] for h in body["history"]] == [QUEUED]
    assert body["created_at"].endswith("+00:00")
    assert body["submitted_by"]


def test_a_completed_command_shows_its_tuple(api: Api) -> None:
    command_id = api.submit({"job_id": 1001, "products": ["lc"]})
    api.runtime.registry.start_attempt(command_id)
    api.runtime.registry.record_progress(command_id, count_attempt=True)  # the run's request went out
    api.runtime.registry.complete(command_id, [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}])
    body = api.get(command_id).get_json()
    assert body["state"] == COMPLETED and body["attempts"] == 1
    assert body["result"] == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]
    assert [h["state"] for h in body["history"]] == [QUEUED, CommandState.RUNNING, COMPLETED]


def test_an_admin_token_may_act_for_another_user(api: Api) -> None:
    admin, _ = api.runtime.tokens.create("ops@example.org", name="ops", admin=True)
    command_id = api.submit({"job_id": 1004, "user_id": OTHER}, token=admin)
    stored = api.runtime.registry.get(command_id)
    assert stored is not None and stored.user_id == OTHER
    assert api.get(command_id).status_code == 404  # astro's token may not see it


def test_a_user_token_may_not_act_for_another_user(api: Api) -> None:
    body = problem(api.post({"job_id": 1004, "user_id": OTHER}), 403)
    assert "may not act for another user_id" in body["detail"]
    api.assert_nothing_enqueued()


# ---- bad input: 4xx problem naming the field, nothing enqueued ----------------------------------

BAD_BODIES: list[tuple[str, Any, int, str]] = [
    # (case, JSON value to send, status, pointer)
    ("array body", [], 422, "/"),
    ("string body", "job 1001", 422, "/"),
    ("number body", 1001, 422, "/"),
    ("job_id missing", {"products": ["lc"]}, 422, "/job_id"),
    ("job_id string", {"job_id": "1001"}, 422, "/job_id"),
    ("job_id zero", {"job_id": 0}, 422, "/job_id"),
    ("job_id negative", {"job_id": -1001}, 422, "/job_id"),
    ("job_id true", {"job_id": True}, 422, "/job_id"),
    ("job_id false", {"job_id": False}, 422, "/job_id"),
    ("job_id float", {"job_id": 1001.5}, 422, "/job_id"),
    ("job_id huge float", {"job_id": 1e300}, 422, "/job_id"),
    ("job_id null", {"job_id": None}, 422, "/job_id"),
    ("job_id list", {"job_id": [1001]}, 422, "/job_id"),
    ("job_id too large", {"job_id": 2**31}, 422, "/job_id"),
    ("job_id huge", {"job_id": 10**30}, 422, "/job_id"),
    ("products empty list", {"job_id": 1001, "products": []}, 422, "/products"),
    ("products unknown name", {"job_id": 1001, "products": ["lc", "bogus"]}, 422, "/products"),
    ("products wrong case", {"job_id": 1001, "products": ["LC"]}, 422, "/products"),
    ("products bare string", {"job_id": 1001, "products": "lc"}, 422, "/products"),
    ("products ALL", {"job_id": 1001, "products": "ALL"}, 422, "/products"),
    ("products number", {"job_id": 1001, "products": 7}, 422, "/products"),
    ("products of numbers", {"job_id": 1001, "products": [1, 2]}, 422, "/products"),
    ("products object", {"job_id": 1001, "products": {"lc": True}}, 422, "/products"),
    ("products nested", {"job_id": 1001, "products": [["lc"]]}, 422, "/products"),
    ("products null", {"job_id": 1001, "products": None}, 422, "/products"),
    ("user_id malformed", {"job_id": 1001, "user_id": "astro-at-example.org"}, 422, "/user_id"),
    ("user_id number", {"job_id": 1001, "user_id": 42}, 422, "/user_id"),
    ("user_id empty", {"job_id": 1001, "user_id": ""}, 422, "/user_id"),
    ("user_id list", {"job_id": 1001, "user_id": [ASTRO]}, 422, "/user_id"),
    ("unknown field", {"job_id": 1001, "jobid": 1001}, 422, "/jobid"),
    ("unknown field UserID", {"job_id": 1001, "UserID": ASTRO}, 422, "/UserID"),
]


@pytest.mark.parametrize(("case", "body", "status", "pointer"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_json_input_is_refused_naming_the_field(api: Api, case: str, body: Any, status: int, pointer: str) -> None:
    answer = problem(api.post(body), status)
    assert pointer in pointers(answer)
    field_name = pointer.strip("/")
    if field_name:
        assert field_name in answer["detail"]
    api.assert_nothing_enqueued()


BAD_RAW: list[tuple[str, bytes, int]] = [
    ("not JSON", b"{job_id: 1001}", 400),
    ("truncated JSON", b'{"job_id": 10', 400),
    ("not UTF-8", b'{"job_id": 1001, "user_id": "\xff\xfe"}', 400),
    ("nested too deep", b"[" * 30_000 + b"]" * 30_000, 400),
    ("number too long", b'{"job_id": ' + b"9" * 5000 + b"}", 400),
]


@pytest.mark.parametrize(("case", "raw", "status"), BAD_RAW, ids=[c[0] for c in BAD_RAW])
def test_a_body_that_is_not_json_is_a_400_problem_about_the_body(api: Api, case: str, raw: bytes, status: int) -> None:
    answer = problem(api.post(data=raw), status)
    assert pointers(answer) == ["/"]
    assert "JSON" in answer["detail"]
    api.assert_nothing_enqueued()


def test_a_body_over_64_kib_is_413(api: Api) -> None:
    body = {"job_id": 1001, "products": ["lc"] * 20_000}
    raw = json.dumps(body).encode()
    assert len(raw) > 64 * 1024
    answer = problem(api.post(data=raw), 413)
    assert "larger" in answer["detail"]
    api.assert_nothing_enqueued()


def test_a_body_just_under_64_kib_is_read(api: Api) -> None:
    padding = 64 * 1024 - len(json.dumps({"job_id": 1001, "products": []})) - 10
    raw = json.dumps({"job_id": 1001, "products": ["lc"] * (padding // 6)}).encode()
    assert len(raw) <= 64 * 1024
    assert api.post(data=raw).status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/html"])
def test_a_body_that_is_not_labelled_json_is_415(api: Api, content_type: str) -> None:
    problem(api.post({"job_id": 1001}, content_type=content_type), 415)
    api.assert_nothing_enqueued()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "job_id": JSON_VALUES | st.integers(-5, 5000),
        "products": JSON_VALUES | st.lists(st.sampled_from(["lc", "psf", "Image", "x", "all"]), max_size=4)
        | st.just("all"),
        "user_id": JSON_VALUES | st.sampled_from([ASTRO, OTHER, "no-at-sign", "a@b"]),
        "extra": JSON_VALUES,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=FIELDS | JSON_VALUES)
def test_any_json_body_gets_202_or_a_4xx_problem_never_a_500(api: Api, body: Any) -> None:
    before = len(api.dispatched)
    response = api.post(body)
    if response.status_code == 202:
        assert api.dispatched == [*api.dispatched[:before], 1]
        stored = api.runtime.registry.get(response.get_json()["id"])
        assert stored is not None and isinstance(stored.job_id, int) and stored.job_id > 0
        return
    assert 400 <= response.status_code < 500
    assert response.mimetype == PROBLEM
    assert len(api.dispatched) == before


# ---- authentication --------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(api: Api) -> None:
    response = api.client.post("/v1/cancellations", json={"job_id": 1001})
    problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ukcancel"'
    api.assert_nothing_enqueued()


@pytest.mark.parametrize(
    "header",
    ["Bearer ukc_not-a-real-token", "Bearer ", "Basic YXN0cm86c2VjcmV0", "Bearer nonsense", "ukc_token-alone"],
)
def test_a_bad_token_is_401_invalid_token(api: Api, header: str) -> None:
    response = api.client.post("/v1/cancellations", json={"job_id": 1001}, headers={"Authorization": header})
    problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ukcancel", error="invalid_token"'
    api.assert_nothing_enqueued()


def test_a_revoked_token_stops_working_at_once(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    record = api.runtime.tokens.verify(api.token)
    assert record is not None
    api.runtime.tokens.revoke(record.name)
    problem(api.get(command_id), 401)
    problem(api.delete(command_id), 401)
    assert api.post({"job_id": 1001}).status_code == 401


@pytest.mark.parametrize("method", ["get", "delete"])
def test_reading_and_withdrawing_need_a_token_too(api: Api, method: str) -> None:
    command_id = api.submit({"job_id": 1001})
    response = getattr(api.client, method)(f"/v1/cancellations/{command_id}")
    problem(response, 401)
    assert api.runtime.registry.get(command_id).state == QUEUED  # type: ignore[union-attr]


# ---- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command_id", ["0" * 32, "f" * 32, "not-an-id", "../../etc"])
def test_an_unknown_id_is_404_problem(api: Api, command_id: str) -> None:
    problem(api.get(command_id), 404)
    problem(api.delete(command_id), 404)


def test_another_users_command_is_404_not_403(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    other, _ = api.runtime.tokens.create(OTHER)
    problem(api.get(command_id, token=other), 404)
    problem(api.delete(command_id, token=other), 404)
    assert api.runtime.registry.get(command_id).state == QUEUED  # type: ignore[union-attr]


@pytest.mark.parametrize("query", ["?wait=61", "?wait=-1", "?wait=soon", "?wait=1.5"])
def test_a_bad_wait_is_422_naming_the_query_parameter(api: Api, query: str) -> None:
    command_id = api.submit({"job_id": 1001})
    answer = problem(api.get(command_id, query), 422)
    assert answer["errors"][0]["pointer"] == "/wait" and answer["errors"][0]["in"] == "query"


def test_long_poll_returns_as_soon_as_another_thread_completes_the_command(api: Api) -> None:
    command_id = api.submit({"job_id": 1001, "products": ["lc"]})
    result = [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]

    def worker() -> None:
        time.sleep(0.5)
        api.runtime.registry.start_attempt(command_id)
        time.sleep(0.2)
        api.runtime.registry.complete(command_id, result)

    thread = threading.Thread(target=worker)
    started = time.monotonic()
    thread.start()
    response = api.get(command_id, "?wait=30")
    elapsed = time.monotonic() - started
    thread.join(5)
    assert response.status_code == 200
    body = response.get_json()
    assert body["state"] == COMPLETED and body["result"] == result
    assert 0.6 <= elapsed < 5  # woke on completion (not on "running"), long before the 30 s


def test_long_poll_gives_the_command_as_it_stands_when_the_wait_ends(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    started = time.monotonic()
    body = api.get(command_id, "?wait=1").get_json()
    assert body["state"] == QUEUED and body["result"] is None
    assert 0.9 <= time.monotonic() - started < 4


def test_long_poll_of_a_terminal_command_returns_at_once(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    api.delete(command_id)
    started = time.monotonic()
    assert api.get(command_id, "?wait=60").get_json()["state"] == "aborted"
    assert time.monotonic() - started < 1


# ---- withdrawing -------------------------------------------------------------------------------


def test_withdraw_of_a_queued_command_aborts_it_and_takes_it_out_of_line(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    assert api.runtime.schedule.depth() == {ASTRO: 1}
    response = api.delete(command_id)
    assert response.status_code == 200
    body = response.get_json()
    assert body["state"] == "aborted" and body["result"] is None and body["last_error"]
    assert [h["state"] for h in body["history"]] == [QUEUED, "aborted"]
    assert api.runtime.schedule.depth() in ({}, {ASTRO: 0})
    assert api.runtime.schedule.claim("a-turn") is None  # a worker taking the turn finds nothing
    problem(api.delete(command_id), 409)


def test_withdraw_of_a_running_command_is_409(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    api.runtime.registry.start_attempt(command_id)
    answer = problem(api.delete(command_id), 409)
    assert "running" in answer["detail"]
    assert api.runtime.registry.get(command_id).state == CommandState.RUNNING  # type: ignore[union-attr]


def test_withdraw_of_a_completed_command_is_409_and_keeps_the_result(api: Api) -> None:
    command_id = api.submit({"job_id": 1001})
    api.runtime.registry.start_attempt(command_id)
    api.runtime.registry.complete(command_id, [2, {}])
    problem(api.delete(command_id), 409)
    assert api.get(command_id).get_json()["result"] == [2, {}]


# ---- probes and the API description -------------------------------------------------------------


def test_healthz_is_open_and_ok_and_names_the_release(api: Api) -> None:
    from ukcancel import __version__

    response = api.client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok", "version": __version__}
    assert __version__ == tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]


def test_readyz_is_503_naming_the_missing_worker_then_200_with_one(api: Api) -> None:
    response = api.client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["workers"] == "no live worker"
    api.runtime.connection.zadd(keys.WORKERS, {"w1@test": time.time()})
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["workers"] == 1


def test_readyz_names_redis_when_it_is_unreachable() -> None:
    import redis

    runtime = create_runtime(Settings(), connection=redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=1))
    response = create_api(runtime=runtime).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("unreachable")


def test_openapi_describes_the_routes_and_the_bearer_scheme(api: Api) -> None:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/cancellations", "/v1/cancellations/{command_id}", "/healthz", "/readyz"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {"bearerAuth": []} in spec["security"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert spec["paths"]["/readyz"]["get"]["security"] == []
    post = spec["paths"]["/v1/cancellations"]["post"]
    assert "202" in post["responses"]
    item = spec["paths"]["/v1/cancellations/{command_id}"]
    assert {"get", "delete"} <= set(item)
    assert any(p["name"] == "wait" and p["in"] == "query" for p in item["get"].get("parameters", []))
