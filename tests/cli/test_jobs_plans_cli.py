"""`ukcancel jobs`, `ukcancel plan` and `ukcancel plan apply`, and the client's jobs and plans, over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ukcancel.client import Client, ServiceError

Served = Any  # the `served` fixture of tests/cli/conftest.py
CliRun = Any


def test_jobs_prints_each_products_state_and_filters(served: Served, ukcancel: CliRun) -> None:
    result = ukcancel(served, "jobs")
    assert result.exit_code == 0, result.output
    for text in ("1001", "GRB 201221A", "LightCurve 3 (Running)", "StandardPos 2 (Queued)", "V404 Cyg",
                 "AstromPos 5 (Waiting for the standard position)"):
        assert text in result.stdout
    assert "3 of 3 jobs" in result.stderr

    filtered = ukcancel(served, "jobs", "--name", "grb*", "--submitted-after", "2026-11-19", "--state", "active")
    assert filtered.exit_code == 0, filtered.output
    assert "GRB 201221A" in filtered.stdout and "V404" not in filtered.stdout and "1 of 3 jobs" in filtered.stderr


def test_jobs_json_is_the_services_view(served: Served, ukcancel: CliRun) -> None:
    result = ukcancel(served, "jobs", "--job", "1002", "--products", "lc,psf", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert [(j["job_id"], [p["name"] for p in j["products"]]) for j in view["jobs"]] == [
        (1002, ["LightCurve", "StandardPos"])
    ]


def test_a_bad_filter_is_a_usage_error_naming_the_option(served: Served, ukcancel: CliRun) -> None:
    result = ukcancel(served, "jobs", "--submitted-after", "2026-11-21", "--submitted-before", "2026-11-20")
    assert result.exit_code == 2
    assert "--submitted-before: Must not be earlier than submitted_after." in result.stderr
    assert ukcancel(served, "jobs", "--state", "running").exit_code == 2  # click refuses it before sending


def test_plan_prints_what_would_be_cancelled_and_apply_waits_for_the_batch(served: Served, ukcancel: CliRun) -> None:
    planned = ukcancel(served, "plan", "--submitted-after", "2026-11-19")
    assert planned.exit_code == 0, planned.output
    assert "1002" in planned.stdout and "LightCurve, Spectrum, AstromPos" in planned.stdout
    assert "submitted before 2026-11-19T00:00:00Z" in planned.stdout  # 1003, left out
    assert "5 products of 2 jobs would be cancelled (1 job left out)" in planned.stderr  # "1 job", not "1 jobs"
    plan_id = planned.stderr.split("ukcancel plan apply ")[1].split()[0]
    assert served.simulator.state.product_state(1001, "lc") == 3  # a plan cancels nothing

    applied = ukcancel(served, "plan", "apply", plan_id[:4], "--wait")  # a short id, as for commands and batches
    assert applied.exit_code == 0, applied.output
    assert "Job cancelled OK" in applied.stdout
    assert served.simulator.state.product_state(1001, "lc") == -4
    assert served.simulator.state.product_state(1003, "lc") == 4

    again = ukcancel(served, "plan", "apply", plan_id, "--json")
    assert again.exit_code == 0 and len(served.runtime.connection.keys("ukcancel:batch:*:items")) == 1


def test_applying_someone_elses_or_no_plan_is_exit_1(served: Served, ukcancel: CliRun) -> None:
    result = ukcancel(served, "plan", "apply", "0" * 32)
    assert result.exit_code == 1 and "HTTP 404" in result.stderr


def test_a_plan_is_named_by_a_unique_start_of_its_id_among_the_callers_plans(served: Served, ukcancel: CliRun) -> None:
    other_token, _ = served.runtime.tokens.create("other@example.org", name="other")
    theirs = Client(served.url, other_token).create_plan(job_ids=[1004])
    mine = [Client(served.url, served.token).create_plan(job_ids=[1001]) for _ in range(2)]
    listed = Client(served.url, served.token).list_plans()
    assert [p["id"] for p in listed] == mine[::-1]  # newest first, only the caller's
    unknown = ukcancel(served, "plan", "apply", theirs[:6])
    assert unknown.exit_code == 2 and f"none of your plans has an id starting with '{theirs[:6]}'" in unknown.stderr
    assert ukcancel(served, "plan", "apply", "").exit_code == 2
    if mine[0][0] == mine[1][0]:
        ambiguous = ukcancel(served, "plan", "apply", mine[0][0])
        assert ambiguous.exit_code == 2 and "is ambiguous" in ambiguous.stderr
    with pytest.raises(ServiceError) as refused:
        Client(served.url, served.token).list_plans(user_id="other@example.org")
    assert refused.value.status == 403


def test_the_client_plans_and_applies(served: Served) -> None:
    client = Client(served.url, served.token)
    view = client.jobs(wait=30, state="finished", products=["Spectrum"])
    assert [j["job_id"] for j in view["jobs"]] == [1003]
    plan_id = client.create_plan(job_ids=[1001], products=["lc"])
    plan = client.wait_plan(plan_id, timeout=30)
    assert plan["pairs"] == [{"job_id": 1001, "name": "GRB 201221A", "products": ["LightCurve"]}]
    batch_id = client.apply_plan(plan_id)
    assert client.apply_plan(plan_id) == batch_id
    done = client.wait_batch(batch_id, timeout=30)
    assert [item["result"] for item in done["items"]] == [[1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]]
    other_token, _ = served.runtime.tokens.create("other@example.org", name="other")
    try:
        Client(served.url, other_token).get_plan(plan_id)
    except ServiceError as exc:
        assert exc.status == 404
    else:
        raise AssertionError("another user's plan was readable")
