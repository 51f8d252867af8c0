"""`Idempotency-Key` on POST /v1/cancellations: a retried request never makes a second command."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import requests
from facility_api import ALICE, PROBLEM, Facility, build_facility
from werkzeug.serving import make_server

from ukcancel import keys
from ukcancel.dispatch import DispatchError
from ukcancel.settings import Settings

BODY = {"job_id": 1001, "products": ["LightCurve"]}


def post(facility: Facility, who: str, key: str | None, body: object = BODY) -> object:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return facility.call("POST", "/v1/cancellations", who, body, headers)


def test_same_key_and_body_answers_the_original_command(facility: Facility) -> None:
    first = post(facility, "alice", "retry-1")
    assert first.status_code == 202
    command_id = first.get_json()["id"]

    again = post(facility, "alice", "retry-1")
    assert again.status_code == 200
    replay = again.get_json()
    assert replay["id"] == command_id and replay["job_id"] == 1001 and replay["products"] == ["LightCurve"]
    assert again.headers["Location"] == first.headers["Location"]
    assert facility.command_ids() == {command_id}


def test_key_order_and_spacing_do_not_make_a_different_body(facility: Facility) -> None:
    first = post(facility, "alice", "k")
    raw = json.dumps({"products": ["LightCurve"], "job_id": 1001}, indent=2)
    again = facility.client.post(
        "/v1/cancellations", data=raw,
        headers={**facility.auth("alice"), "Content-Type": "application/json", "Idempotency-Key": "k"},
    )
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]


def test_same_key_with_a_different_body_is_refused(facility: Facility) -> None:
    command_id = post(facility, "alice", "k-2").get_json()["id"]
    response = post(facility, "alice", "k-2", {"job_id": 1002})
    assert response.status_code == 422
    assert response.content_type == PROBLEM
    assert "different request body" in response.get_json()["detail"]
    assert facility.command_ids() == {command_id}


def test_keys_are_scoped_per_token(facility: Facility) -> None:
    alice = post(facility, "alice", "shared-key")
    bob = post(facility, "bob", "shared-key", {"job_id": 1004})
    assert alice.status_code == bob.status_code == 202
    assert alice.get_json()["id"] != bob.get_json()["id"]
    assert facility.runtime.connection.exists(keys.idempotency("alice", "shared-key"))
    assert facility.runtime.connection.exists(keys.idempotency("bob", "shared-key"))


def test_without_a_key_every_post_is_a_new_command(facility: Facility) -> None:
    ids = {post(facility, "alice", None).get_json()["id"] for _ in range(3)}
    assert len(ids) == 3


def test_a_replay_shows_the_command_as_it_is_now(facility: Facility) -> None:
    command_id = post(facility, "alice", "then-withdrawn").get_json()["id"]
    assert facility.call("DELETE", f"/v1/cancellations/{command_id}", "alice").status_code == 200
    again = post(facility, "alice", "then-withdrawn")
    assert again.status_code == 200
    assert again.get_json()["state"] == "aborted"


@pytest.mark.parametrize("key", ["", "x" * 129, "has space", "semi;colon", "ünicode"])
def test_a_malformed_key_is_a_problem_naming_the_header(facility: Facility, key: str) -> None:
    response = facility.client.post(
        "/v1/cancellations", data=json.dumps(BODY),
        headers={**facility.auth("alice"), "Content-Type": "application/json",
                 "Idempotency-Key": key.encode().decode("latin-1")},
    )
    assert response.status_code == 422
    assert response.content_type == PROBLEM
    assert response.get_json()["errors"][0] == {
        "pointer": "/Idempotency-Key", "detail": "Must be 1-128 characters: letters, digits or _.:+/=-", "in": "headers"
    }
    assert facility.command_ids() == set()


def test_a_broker_that_is_down_keeps_the_command_and_its_key(facility: Facility) -> None:
    """The broker carries only turns: a command it refuses is queued all the same (the reconciler
    sends its turn later), so the answer is 202 and a retry with the key replays that command."""

    def broker_down(count: int) -> None:
        raise DispatchError("connection refused")

    facility.runtime.schedule.dispatch = broker_down
    first = post(facility, "alice", "during-outage")
    assert first.status_code == 202
    command_id = first.get_json()["id"]
    retried = post(facility, "alice", "during-outage")
    assert retried.status_code == 200 and retried.get_json()["id"] == command_id  # the same command, not a second
    assert facility.command_ids() == {command_id}
    assert facility.runtime.registry.state_of(command_id) == "queued"
    assert facility.runtime.connection.xlen(keys.RESULTS_STREAM) == 0  # nothing ended


def test_the_header_is_in_the_openapi_document(facility: Facility) -> None:
    operation = facility.client.get("/openapi.json").get_json()["paths"]["/v1/cancellations"]["post"]
    header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header" and header["required"] is False
    assert {"200", "202", "422"} <= set(operation["responses"])


# -- concurrency against the real Redis server ------------------------------------------------------
@pytest.fixture
def served_on_redis(redis_url: str) -> Iterator[tuple[str, Facility]]:
    """The API on a real threaded HTTP server, over this test's real Redis database."""
    built = build_facility(Settings(redis_url=redis_url))
    server = make_server("127.0.0.1", 0, built.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", built
    server.shutdown()
    thread.join(5)


def test_concurrent_posts_with_one_key_create_exactly_one_command(served_on_redis: tuple[str, Facility]) -> None:
    base_url, facility = served_on_redis
    threads = 16
    barrier = threading.Barrier(threads)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one_client() -> None:
        session = requests.Session()
        barrier.wait()
        response = session.post(
            f"{base_url}/v1/cancellations", json=BODY, timeout=30,
            headers={**facility.auth("alice"), "Idempotency-Key": "race-1"},
        )
        with lock:
            answers.append((response.status_code, response.json()["id"]))

    workers = [threading.Thread(target=one_client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    assert len(answers) == threads
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * (threads - 1) + [202]
    assert len({command_id for _, command_id in answers}) == 1
    assert facility.command_ids() == {answers[0][1]}
    assert facility.runtime.connection.zcard(keys.user_commands("astro@example.org")) == 1
    assert facility.runtime.schedule.depth() == {"astro@example.org": 1}


def test_a_token_reusing_a_revoked_name_starts_a_fresh_idempotency_scope_and_secret(
    facility_on_redis: Facility,
) -> None:
    facility = facility_on_redis
    key = {"Idempotency-Key": "nightly-run-1"}
    first = facility.submit("alice", {"job_id": 1001}, key)
    old_secret = facility.records["alice"].callback_secret
    facility.runtime.tokens.revoke("alice")
    token, record = facility.runtime.tokens.create(ALICE, name="alice")
    facility.tokens["alice"], facility.records["alice"] = token, record
    assert record.callback_secret != old_secret
    again = facility.call("POST", "/v1/cancellations", "alice", {"job_id": 1001}, key)
    assert again.status_code == 202 and again.get_json()["id"] != first  # not the revoked token's command
