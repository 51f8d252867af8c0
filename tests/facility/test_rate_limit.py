"""The per-token API rate limit: 429 problem+json with Retry-After, counters in the service's Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from facility_api import PROBLEM, Facility, build_facility

from ukcancel.settings import Settings

TINY = "3 per minute"


def spend(facility: Facility, who: str | None, times: int, path: str = "/v1/cancellations") -> list[int]:
    return [facility.call("GET", path, who).status_code for _ in range(times)]


def test_over_the_limit_is_a_429_problem_with_retry_after(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(api_rate_limit=TINY)
    assert spend(facility, "alice", 3) == [200, 200, 200]
    response = facility.call("GET", "/v1/cancellations", "alice")
    assert response.status_code == 429
    assert response.content_type == PROBLEM
    problem = response.get_json()
    assert problem["status"] == 429 and TINY in problem["detail"]
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_every_route_spends_the_same_budget(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(api_rate_limit=TINY)
    command_id = facility.submit("alice")
    assert facility.call("GET", f"/v1/cancellations/{command_id}", "alice").status_code == 200
    assert facility.call("DELETE", f"/v1/cancellations/{command_id}", "alice").status_code == 200
    assert facility.call("POST", "/v1/cancellations", "alice", {"job_id": 1002}).status_code == 429


def test_each_token_has_its_own_budget(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(api_rate_limit=TINY)
    assert spend(facility, "alice", 4)[-1] == 429
    assert spend(facility, "bob", 3) == [200, 200, 200]


def test_requests_without_a_valid_token_are_limited_by_address(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(api_rate_limit=TINY)
    assert spend(facility, None, 4) == [401, 401, 401, 429]
    assert spend(facility, "alice", 1) == [200]  # a token's budget is its own


def test_probes_metrics_and_the_openapi_document_are_never_limited(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(api_rate_limit="1 per minute")
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert 429 not in spend(facility, None, 5, path)


def test_success_answers_carry_no_retry_after(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(api_rate_limit=TINY)
    response = facility.call("GET", "/v1/cancellations", "alice")
    assert response.status_code == 200
    assert "Retry-After" not in response.headers
    assert response.headers["X-RateLimit-Remaining"] == "2"


def test_api_processes_share_the_budget_through_redis(redis_url: str) -> None:
    """Two API processes (two apps on one Redis database) count one token's requests together."""
    first = build_facility(Settings(redis_url=redis_url, api_rate_limit=TINY))
    second = build_facility(Settings(redis_url=redis_url, api_rate_limit=TINY), same_store_as=first)
    assert spend(first, "alice", 2) == [200, 200]
    assert spend(second, "alice", 2) == [200, 429]
    limiter_keys = [k.decode() for k in first.runtime.connection.keys("LIMITS:LIMITER/ukcancel-api/*")]
    assert limiter_keys and all("/token:" in k or "/addr:" in k for k in limiter_keys)


def test_one_redis_round_trip_per_request_gives_the_headers_too(
    make_facility: Callable[..., Facility], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hit returns the window's count and expiry: X-RateLimit-* and Retry-After need no reads after it."""
    from limits.storage import RedisStorage

    def second_round_trip(*args: object, **kwargs: object) -> None:
        raise AssertionError("the window was read again after the hit")

    monkeypatch.setattr(RedisStorage, "get", second_round_trip)
    monkeypatch.setattr(RedisStorage, "get_expiry", second_round_trip)
    facility = make_facility(api_rate_limit=TINY)
    first = facility.call("GET", "/v1/cancellations", "alice")
    assert first.status_code == 200 and first.headers["X-RateLimit-Remaining"] == "2"
    assert spend(facility, "alice", 2) == [200, 200]
    limited = facility.call("GET", "/v1/cancellations", "alice")
    assert limited.status_code == 429 and limited.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(limited.headers["Retry-After"]) <= 60


def test_the_token_is_read_in_the_hit_s_own_round_trip(
    make_facility: Callable[..., Facility], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate limit's hit reads the token's record too: no lookup of its own, and the budgets stay as they were."""
    from ukcancel.token import TokenRegistry

    facility = make_facility(api_rate_limit=TINY)

    def lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError("the token was looked up in a round trip of its own")

    monkeypatch.setattr(TokenRegistry, "verify", lookup)
    assert spend(facility, "alice", 4) == [200, 200, 200, 429]
    # An unknown (or revoked) token is counted by address, as a request without a token.
    unknown = {"Authorization": "Bearer ukc_" + "x" * 43}
    answers = [facility.client.get("/v1/cancellations", headers=unknown).status_code for _ in range(3)]
    assert answers == [401, 401, 401]
    assert spend(facility, None, 1) == [429]
    assert spend(facility, "bob", 1) == [200]
    buckets = sorted(k.decode().split("/")[2] for k in facility.runtime.connection.keys("LIMITS:LIMITER/*"))
    assert buckets == ["addr:127.0.0.1", "token:alice", "token:bob"]
    # Revoked: the next request finds no record and is counted by address (spent already: 429).
    facility.runtime.tokens.revoke("bob")
    assert spend(facility, "bob", 1) == [429]
