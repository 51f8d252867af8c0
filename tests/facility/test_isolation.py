"""Who may do what: a matrix of every /v1 route against two users and an admin.

Each `Route` names how to make the resource it acts on (owned by the target user) and what a
user token aimed at another user gets: 403 where the request names another user_id (acting for
them), 404 where it names another user's resource (its existence must not leak). A new route
is covered by appending one `Route` to `ROUTES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from facility_api import ALICE, BOB, OPS, PROBLEM, Facility

from ukcancel.jobs import ListedJob

USERS = {"alice": ALICE, "bob": BOB, "ops": OPS}


def own_command(facility: Facility, owner: str) -> dict[str, str]:
    return {"command_id": facility.submit(owner, {"job_id": 1001})}


def own_batch(facility: Facility, owner: str) -> dict[str, str]:
    response = facility.call("POST", "/v1/batches", owner, {"items": [{"job_id": 1001}, {"job_id": 1002}]})
    assert response.status_code == 202, response.get_data(as_text=True)
    return {"batch_id": response.get_json()["id"]}


def no_resource(facility: Facility, owner: str) -> dict[str, str]:
    return {}


def fresh_jobs(facility: Facility, owner: str) -> dict[str, str]:
    """The owner's jobs as a worker would have just cached them (no worker here: nothing is asked)."""
    cache = facility.runtime.jobs
    cache.save_listing(USERS[owner], [ListedJob(1001, "GRB 201221A", "2026-11-20 10:15:00", None, ("LightCurve",))])
    cache.save_states(USERS[owner], 1001, {"LightCurve": (3, "Running")})
    return {}


def own_plan(facility: Facility, owner: str) -> dict[str, str]:
    fresh_jobs(facility, owner)
    response = facility.call("POST", "/v1/plans", owner, {"user_id": USERS[owner]} if owner == "ops" else {})
    assert response.status_code == 202 and response.get_json()["state"] == "ready", response.get_data(as_text=True)
    return {"plan_id": response.get_json()["id"]}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # placeholders: {user_id} of the target, and whatever `resource` returns
    body: dict[str, Any] | None = None  # string values may hold the same placeholders
    resource: Callable[[Facility, str], dict[str, str]] = no_resource
    success: int = 200
    foreign: int = 404  # what a user token gets when aimed at another user
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, facility: Facility, who: str, target: str) -> Any:
        values = {"user_id": USERS[target], **self.resource(facility, target)}
        body = {k: v.format(**values) if isinstance(v, str) else v for k, v in (self.body or {}).items()}
        return facility.call(self.method, self.path.format(**values), who, body if self.body else None, self.headers)


ROUTES = [
    Route("submit", "POST", "/v1/cancellations", {"job_id": 1001, "user_id": "{user_id}"}, success=202, foreign=403),
    Route("list", "GET", "/v1/cancellations?user_id={user_id}", resource=own_command, foreign=403),
    Route("read", "GET", "/v1/cancellations/{command_id}", resource=own_command),
    Route("withdraw", "DELETE", "/v1/cancellations/{command_id}", resource=own_command),
    Route("submit-batch", "POST", "/v1/batches", {"items": [{"job_id": 1001}], "user_id": "{user_id}"},
          success=202, foreign=403),
    Route("read-batch", "GET", "/v1/batches/{batch_id}", resource=own_batch),
    Route("withdraw-batch", "DELETE", "/v1/batches/{batch_id}", resource=own_batch),
    Route("jobs", "GET", "/v1/jobs?user_id={user_id}", resource=fresh_jobs, foreign=403),
    Route("plan", "POST", "/v1/plans", {"user_id": "{user_id}"}, resource=fresh_jobs, success=202, foreign=403),
    Route("list-plans", "GET", "/v1/plans?user_id={user_id}", resource=own_plan, foreign=403),
    Route("read-plan", "GET", "/v1/plans/{plan_id}", resource=own_plan),
    Route("apply-plan", "POST", "/v1/plans/{plan_id}/apply", resource=own_plan, success=202),
]

# (who calls, whose resource or user_id) -> whether the call is the caller's own business
PAIRS = [("alice", "alice", True), ("alice", "bob", False), ("bob", "alice", False), ("ops", "alice", True),
         ("ops", "bob", True)]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
@pytest.mark.parametrize(("who", "target", "allowed"), PAIRS, ids=[f"{w}->{t}" for w, t, _ in PAIRS])
def test_route_matrix(facility: Facility, route: Route, who: str, target: str, allowed: bool) -> None:
    response = route.request(facility, who, target)
    expected = route.success if allowed else route.foreign
    assert response.status_code == expected, response.get_data(as_text=True)
    if not allowed:
        assert response.content_type == PROBLEM


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_every_route_needs_a_token(facility: Facility, route: Route) -> None:
    values = {"user_id": ALICE, **route.resource(facility, "alice")}
    response = facility.call(route.method, route.path.format(**values), None, route.body and {"job_id": 1001})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.content_type == PROBLEM


def test_the_matrix_covers_every_v1_route(facility: Facility) -> None:
    """A /v1 route added without a row here fails this test."""
    covered = {(r.method, re.sub(r"\{(\w+)\}", r"<\1>", r.path.split("?")[0])) for r in ROUTES}
    existing = {
        (method, rule.rule)
        for rule in facility.app.url_map.iter_rules()
        if rule.rule.startswith("/v1/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert existing <= covered, f"routes without an isolation row: {sorted(existing - covered)}"


def test_list_shows_only_the_callers_commands(facility: Facility) -> None:
    alice_ids = {facility.submit("alice", {"job_id": job}) for job in (1001, 1002)}
    bob_ids = {facility.submit("bob", {"job_id": 1004})}

    def listed(who: str, query: str = "") -> set[str]:
        response = facility.call("GET", f"/v1/cancellations{query}", who)
        assert response.status_code == 200, response.get_data(as_text=True)
        return {item["id"] for item in response.get_json()["items"]}

    assert listed("alice") == alice_ids
    assert listed("alice", f"?user_id={ALICE}") == alice_ids
    assert listed("bob") == bob_ids
    assert listed("ops") == alice_ids | bob_ids  # an admin without user_id: every user's
    assert listed("ops", f"?user_id={BOB}") == bob_ids


def test_a_plan_listing_shows_only_the_callers_plans(facility: Facility) -> None:
    alices = own_plan(facility, "alice")["plan_id"]
    bobs = own_plan(facility, "bob")["plan_id"]

    def listed(who: str) -> set[str]:
        response = facility.call("GET", "/v1/plans", who)
        assert response.status_code == 200, response.get_data(as_text=True)
        return {item["id"] for item in response.get_json()["items"]}

    assert alices in listed("alice") and bobs not in listed("alice")
    assert bobs in listed("bob") and alices not in listed("bob")


def test_admin_acts_for_another_user(facility: Facility) -> None:
    command_id = facility.submit("ops", {"job_id": 1004, "user_id": BOB})
    command = facility.call("GET", f"/v1/cancellations/{command_id}", "bob").get_json()
    assert command["user_id"] == BOB and command["submitted_by"] == "ops"
    assert facility.call("GET", f"/v1/cancellations/{command_id}", "alice").status_code == 404


def test_revocation_takes_effect_on_the_next_request(facility: Facility) -> None:
    command_id = facility.submit("alice")
    assert facility.call("GET", f"/v1/cancellations/{command_id}", "alice").status_code == 200
    facility.runtime.tokens.revoke("alice")
    response = facility.call("GET", f"/v1/cancellations/{command_id}", "alice")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert facility.call("GET", "/v1/cancellations", "alice").status_code == 401
    assert facility.call("GET", f"/v1/cancellations/{command_id}", "bob").status_code == 404
