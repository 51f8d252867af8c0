"""`ukcancel cancel / batch / status / fleet` with click's CliRunner against a served API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ukcancel.cli import main

Served = Any  # the `served` fixture of tests/cli/conftest.py


def run(served: Served, *args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI with the service's URL and token from the environment, as a user would set them."""
    environment = {"UKCANCEL_API_URL": served.url, "UKCANCEL_TOKEN": served.token, "REDIS_URL": "", "COLUMNS": "200",
                   **(env or {})}
    return CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)


def test_cancel_one_job_and_wait_exit_0_with_a_table(served: Served) -> None:
    result = run(served, "cancel", "1001", "--products", "LightCurve", "--wait")
    assert result.exit_code == 0, result.output
    assert "Job cancelled OK" in result.output and "1001" in result.output


def test_cancel_partial_success_is_exit_0_and_json_is_the_record(served: Served) -> None:
    run(served, "cancel", "1001", "--products", "lc", "--wait")
    result = run(served, "cancel", "1001", "--wait", "--json")
    assert result.exit_code == 0, result.output
    command = json.loads(result.output)
    assert command["result"][0] == 2
    assert command["result"][1]["LightCurve"]["code"] == 1


def test_cancel_refused_by_the_server_is_exit_1(served: Served) -> None:
    result = run(served, "cancel", "1004", "--wait")  # other@'s job: OK 0, status 0
    assert result.exit_code == 1
    assert "not owned" in result.output


def test_several_jobs_go_as_one_batch_with_progress_and_exit_1_if_any_failed(served: Served) -> None:
    result = run(served, "cancel", "1001", "1002", "1004", "--products", "LightCurve,Spectrum", "--wait", "--json")
    assert result.exit_code == 1, result.output
    view = json.loads(result.output)
    assert view["total"] == 3 and view["results"] == {"-1": 0, "0": 1, "1": 1, "2": 1}


def test_cancel_without_wait_prints_the_id_and_status_shows_it(served: Served) -> None:
    result = run(served, "cancel", "1003", "--json")
    assert result.exit_code == 0
    submitted = json.loads(result.output)
    assert submitted["kind"] == "command"
    served.runtime.registry.wait_terminal(submitted["id"], 20)
    status = run(served, "status", submitted["id"])
    assert status.exit_code == 0, status.output
    assert "could not be cancelled" in status.output


def test_batch_from_csv(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("job_id,products\n1001,LightCurve;StandardPos\n1002,all\n\n1003,\n")
    result = run(served, "batch", str(path), "--wait")
    assert result.exit_code == 0, result.output
    assert result.output.count("Job cancelled OK") >= 2

    batch_id = served.runtime.connection.zrange("ukcancel:user:astro@example.org:batches", 0, -1)[0].decode()
    status = run(served, "status", batch_id, "--json")
    assert status.exit_code == 0
    assert [item["job_id"] for item in json.loads(status.output)["items"]] == [1001, 1002, 1003]


def test_batch_from_json_with_a_refused_item_is_exit_1(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"items": [{"job_id": 1001, "products": ["lc"]}, {"job_id": 1005}]}))
    result = run(served, "batch", str(path), "--wait", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["results"]["0"] == 1


def test_batch_all_active(served: Served) -> None:
    result = run(served, "batch", "--all-active", "--wait", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert {item["job_id"] for item in view["items"]} == {1001, 1002}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("job_id,products\n1001,lc\n12x,lc\n", "item 1 (line 3), job_id"),
        ("job_id,products\n1001,Nonsense\n", "item 0 (line 2), products"),
        ("jobid\n1001\n", "header"),
        ("job_id,products\n", "no items"),
        ("job_id,products\n1001,lc,extra\n", "line 2"),
    ],
)
def test_bad_csv_is_a_usage_error_naming_the_line(served: Served, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = run(served, "batch", str(path))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert served.runtime.schedule.depth() == {}


@pytest.mark.parametrize(
    "args",
    [
        ["cancel"],
        ["cancel", "abc"],
        ["cancel", "1001", "--products", "Nonsense"],
        ["cancel", "0"],
        ["batch"],
        ["batch", "--all-active", "some.csv"],
        ["batch", "missing.csv"],
        ["batch", "jobs.txt"],
        ["batch", "broken.json"],
        ["status"],
        ["cancel", "1001", "--user", "not-an-email"],
    ],
)
def test_usage_errors_exit_2_without_a_traceback(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "some.csv").write_text("job_id\n1001\n")
    (tmp_path / "jobs.txt").write_text("1001\n")
    (tmp_path / "broken.json").write_text("[{")
    result = run(served, *args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.output and "Traceback" not in result.output


def test_service_refusals_and_an_unreachable_service_are_exit_1(served: Served) -> None:
    bad_token = run(served, "status", "0" * 32, env={"UKCANCEL_TOKEN": "ukc_not-a-real-token"})
    assert bad_token.exit_code == 1 and "401" in bad_token.output
    unknown = run(served, "status", "0" * 32)
    assert unknown.exit_code == 1 and "no cancel command or batch" in unknown.output
    unreachable = run(served, "status", "x", env={"UKCANCEL_API_URL": "http://127.0.0.1:9"})
    assert unreachable.exit_code == 1 and "cannot reach the service" in unreachable.output
    no_token = run(served, "status", "x", env={"UKCANCEL_TOKEN": ""})
    assert no_token.exit_code == 2 and "UKCANCEL_TOKEN" in no_token.output
    bad_url = run(served, "status", "x", env={"UKCANCEL_API_URL": "ftp://x"})
    assert bad_url.exit_code == 2 and "UKCANCEL_API_URL" in bad_url.output


def test_fleet_shows_and_sets_the_run_time_limits(redis_url: str) -> None:
    runner = CliRunner()
    env = {"REDIS_URL": redis_url}
    result = runner.invoke(main, ["fleet", "--rate", "3.5", "--in-flight", "6", "--json"], env=env)
    assert result.exit_code == 0, result.output
    state = json.loads(result.output)
    assert (state["rate_per_second"], state["max_in_flight"], state["breaker"]) == (3.5, 6, "closed")
    shown = runner.invoke(main, ["fleet"], env=env)
    assert "3.5 calls/s" in shown.output and "in-flight cap:   6" in shown.output
    assert runner.invoke(main, ["fleet", "--rate", "0"], env=env).exit_code == 2
    too_slow = runner.invoke(main, ["fleet", "--rate", "0.0005"], env=env)  # below the lowest accepted rate
    assert too_slow.exit_code == 2 and "0.001" in too_slow.output
    assert runner.invoke(main, ["fleet", "--rate", "0.001"], env=env).exit_code == 0
    assert runner.invoke(main, ["fleet", "--in-flight", "x"], env=env).exit_code == 2
    assert runner.invoke(main, ["fleet"], env={"REDIS_URL": ""}).exit_code == 2
