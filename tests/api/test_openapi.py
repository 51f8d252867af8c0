"""The OpenAPI document tells the truth: problems as errors, real types, the batch rule, unknown parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import jsonschema
import pytest
from flask.testing import FlaskClient

from ukcancel.assemble import create_api, create_runtime
from ukcancel.command import CancelCommand
from ukcancel.outcome import error_tuple
from ukcancel.runtime import Runtime
from ukcancel.schemas import CancellationSchema
from ukcancel.settings import Settings

ASTRO = "astro@example.org"
PROBLEM = "application/problem+json"
V1_METHODS = {
    ("/v1/cancellations", "get"), ("/v1/cancellations", "post"),
    ("/v1/cancellations/{command_id}", "get"), ("/v1/cancellations/{command_id}", "delete"),
    ("/v1/batches", "post"), ("/v1/batches/{batch_id}", "get"), ("/v1/batches/{batch_id}", "delete"),
}


@pytest.fixture
def served() -> Iterator[tuple[FlaskClient, Runtime, dict[str, str]]]:
    runtime = create_runtime(Settings(), connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    runtime.schedule.dispatch = lambda count: None
    token, _ = runtime.tokens.create(ASTRO)
    yield create_api(runtime=runtime).test_client(), runtime, {"Authorization": f"Bearer {token}"}
    runtime.connection.close()


@pytest.fixture
def spec(served: tuple[FlaskClient, Runtime, dict[str, str]]) -> dict[str, Any]:
    return served[0].get("/openapi.json").get_json()


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = spec["components"][section][name]
    return node


def validator(spec: dict[str, Any], schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator of a component schema, its $refs resolved against the whole document."""
    schema = {**spec["components"]["schemas"][schema_name], "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_every_error_response_is_a_problem_document(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status"} <= set(problem["required"])
    assert {"type", "title", "status", "detail", "instance", "errors"} <= set(problem["properties"])
    checked = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path == "/readyz":  # /readyz's 503 is its own checks body
                continue
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    content = resolve(spec, response)["content"]
                    assert list(content) == [PROBLEM], (path, method, status)
                    assert resolve(spec, content[PROBLEM]["schema"]) is problem
                    checked += 1
    assert checked > 30


def test_every_v1_route_documents_the_errors_it_can_give(spec: dict[str, Any]) -> None:
    for path, method in V1_METHODS:
        documented = set(spec["paths"][path][method]["responses"])
        assert {"401", "429", "503"} <= documented, (path, method)
        if method == "post":
            assert {"400", "403", "413", "415", "422"} <= documented, (path, method)
        if "{" in path:
            assert "404" in documented, (path, method)
        if method == "delete":
            assert "409" in documented, (path, method)
        if method == "get":
            assert "422" in documented, (path, method)  # the query schema
    assert "403" in spec["paths"]["/v1/cancellations"]["get"]["responses"]  # user_id of another user


def test_error_answers_validate_against_the_problem_schema(served: tuple[FlaskClient, Runtime, dict[str, str]],
                                                           spec: dict[str, Any]) -> None:
    client, _, auth = served
    problem = validator(spec, "Problem")
    answers = [
        client.get("/v1/cancellations"),
        client.get("/v1/cancellations/" + "0" * 32, headers=auth),
        client.post("/v1/cancellations", json={"job_id": "x"}, headers=auth),
        client.get("/v1/cancellations?state=nope", headers=auth),
    ]
    assert [a.status_code for a in answers] == [401, 404, 422, 422]
    for answer in answers:
        assert answer.mimetype == PROBLEM
        problem.validate(answer.get_json(force=True))


@pytest.mark.parametrize("path", ["/v1/cancellations?status=aborted", "/v1/cancellations/{id}?status=aborted",
                                  "/v1/batches/{batch}?status=aborted"])
def test_unknown_query_parameters_are_refused_by_name(served: tuple[FlaskClient, Runtime, dict[str, str]],
                                                      path: str) -> None:
    client, _, auth = served
    command = client.post("/v1/cancellations", json={"job_id": 1001}, headers=auth).get_json()["id"]
    batch = client.post("/v1/batches", json={"items": [{"job_id": 1001}]}, headers=auth).get_json()["id"]
    response = client.get(path.format(id=command, batch=batch), headers=auth)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert {"pointer": "/status", "detail": "Unknown field.", "in": "query"} in body["errors"]
    assert "status" in body["detail"]


def test_known_query_parameters_still_work(served: tuple[FlaskClient, Runtime, dict[str, str]]) -> None:
    client, _, auth = served
    client.post("/v1/cancellations", json={"job_id": 1001}, headers=auth)
    response = client.get("/v1/cancellations?state=queued&limit=5", headers=auth)
    assert response.status_code == 200
    assert len(response.get_json()["items"]) == 1


def test_the_result_type_validates_real_results_and_refuses_others(served: tuple[FlaskClient, Runtime, dict[str, str]],
                                                                   spec: dict[str, Any]) -> None:
    _, runtime, _ = served
    cancellation = validator(spec, "Cancellation")
    result = spec["components"]["schemas"]["Cancellation"]["properties"]["result"]
    assert [item["type"] for item in result["prefixItems"]] == ["integer", "object"]
    real = [
        None,
        [1, {"LightCurve": {"cancelled": True}}],
        [2, {"LightCurve": {"cancelled": True}, "Spectrum": {"cancelled": False, "error": "done"}}],
        error_tuple(-1, "read timeout"),
        error_tuple(0, "Unknown job"),
    ]
    for value in real:
        command = CancelCommand(job_id=1001, user_id=ASTRO, products="all")
        command.result = value
        cancellation.validate(CancellationSchema().dump(command))
    for wrong in ([1], [1, {}, 3], ["1", {}], [1, "text"], {"status": 1}, 7):
        command = CancelCommand(job_id=1001, user_id=ASTRO, products="all")
        command.result = wrong
        with pytest.raises(jsonschema.ValidationError):
            cancellation.validate(CancellationSchema().dump(command))


@pytest.mark.parametrize(
    "body, valid",
    [
        ({"items": [{"job_id": 1}]}, True),
        ({"items": [{"job_id": 1}], "all_active": False}, True),
        ({"all_active": True}, True),
        ({"all_active": True, "items": None}, True),
        ({"all_active": True, "items": [{"job_id": 1}]}, False),
        ({}, False),
        ({"all_active": False}, False),
        ({"items": None}, False),
    ],
)
def test_the_batch_rule_is_in_the_document_and_agrees_with_validation(
    served: tuple[FlaskClient, Runtime, dict[str, str]], spec: dict[str, Any], body: dict[str, Any], valid: bool
) -> None:
    client, _, auth = served
    document_says = validator(spec, "BatchRequest").is_valid(body)
    answer = client.post("/v1/batches", json=body, headers=auth)
    assert document_says is valid
    assert answer.status_code == (202 if valid else 422), answer.get_data(as_text=True)
