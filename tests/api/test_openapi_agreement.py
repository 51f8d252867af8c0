"""The five requests the OpenAPI document allowed and the API refused (schemathesis' findings):
each is now refused by the document or accepted by the API; and the other low findings of the
HTTP surface (a 4,301-digit job_ids string, /docs keeping no token)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from ukcancel.assemble import create_api, create_runtime
from ukcancel.settings import Settings


@pytest.fixture
def api() -> Any:
    runtime = create_runtime(Settings(callback_allowed_hosts=("127.0.0.1",)),
                             connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    runtime.dispatch.refresh_jobs = lambda user_id: None  # type: ignore[method-assign]
    token, _ = runtime.tokens.create("astro@example.org")
    client = create_api(runtime=runtime).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def spec(api: Any) -> dict[str, Any]:
    return api.get("/openapi.json").get_json()


def test_an_empty_cursor_is_refused_by_the_document(api: Any) -> None:
    [cursor] = [p for p in spec(api)["paths"]["/v1/cancellations"]["get"]["parameters"] if p["name"] == "cursor"]
    assert cursor["schema"]["minLength"] == 1
    assert api.get("/v1/cancellations?cursor=").status_code == 422


def test_submitted_before_equal_to_submitted_after_is_an_empty_range(api: Any) -> None:
    when = "2026-01-01T00:00:00Z"
    assert api.get(f"/v1/jobs?submitted_after={when}&submitted_before={when}").status_code == 200
    later = api.get(f"/v1/jobs?submitted_after={when}&submitted_before=2025-01-01T00:00:00Z")
    assert later.status_code == 422


def test_an_integral_job_id_written_with_a_fraction_is_that_integer(api: Any) -> None:
    accepted = api.post("/v1/cancellations", json={"job_id": 890.0})
    assert accepted.status_code == 202
    assert api.get(accepted.headers["Location"]).get_json()["job_id"] == 890
    assert api.post("/v1/cancellations", json={"job_id": 890.5}).status_code == 422


def test_a_callback_host_off_the_allow_list_is_refused_and_the_document_says_so(api: Any) -> None:
    refused = api.post("/v1/cancellations", json={"job_id": 1001, "callback_url": "https://0.a"})
    assert refused.status_code == 422
    described = spec(api)["components"]["schemas"]["CancellationRequest"]["properties"]["callback_url"]
    assert "UKCANCEL_CALLBACK_ALLOWED_HOSTS" in described["description"]


def test_null_products_or_job_ids_in_a_plan_mean_no_filter(api: Any) -> None:
    assert api.post("/v1/plans", json={"products": None}).status_code == 202
    assert api.post("/v1/plans", json={"job_ids": None, "products": None}).status_code == 202
    assert api.post("/v1/plans", json={"products": ["bogus"]}).status_code == 422


def test_a_4301_digit_job_ids_string_is_a_422_not_a_500(api: Any) -> None:
    for body in ({"job_ids": "9" * 4301}, {"job_ids": "1," + "9" * 5000}, {"job_ids": "\u00b2"}):
        response = api.post("/v1/plans", json=body)
        assert response.status_code == 422, body
        assert response.get_json()["errors"][0]["pointer"] == "/job_ids"
    assert api.get("/v1/jobs?job_ids=" + "9" * 4301).status_code == 422


def test_the_docs_page_keeps_no_token_in_local_storage(api: Any) -> None:
    html = api.get("/docs").get_data(as_text=True)
    assert '"persistAuthorization": false' in html
