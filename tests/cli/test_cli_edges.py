"""The CLI's edges found in user trials: list, withdraw, waiting with --timeout and without a
worker, big batches as summaries, id prefixes, wrong service URLs, shell completion.

Real HTTP against the API on a local port (tests/cli/conftest.py), with or without a worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ukcancel.client import Client

Served = Any  # the fixtures of tests/cli/conftest.py
CliRun = Any
UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))
FULL_ID = re.compile(r"\b[0-9a-f]{32}\b")


def client_of(api: Served, token: str | None = None) -> Client:
    return Client(api.url, token or api.token)


# -- ukcancel list ---------------------------------------------------------------------------------------
def test_list_prints_full_ids_newest_first_and_applies_the_apis_filters(served_without_worker: Served,
                                                                         ukcancel: CliRun) -> None:
    api = served_without_worker
    client = client_of(api)
    ids = [client.submit(job, "all") for job in (1001, 1002, 1003, 1001)]

    table = ukcancel(api, "list")
    assert table.exit_code == 0, table.output
    assert FULL_ID.findall(table.stdout) == ids[::-1]  # whole, newest first
    assert "4 commands" in table.stderr

    def listed(*args: str) -> list[dict[str, Any]]:
        result = ukcancel(api, "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["items"]

    assert [c["id"] for c in listed("--job", "1001")] == [ids[3], ids[0]]
    assert listed("--state", "completed") == []
    assert len(listed("--state", "queued")) == 4
    assert listed("--created-after", "2999-01-01") == []
    an_hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert len(listed("--created-after", an_hour_ago)) == 4
    assert [c["id"] for c in listed("--all")] == ids[::-1]

    first = ukcancel(api, "list", "--limit", "1")
    assert FULL_ID.findall(first.stdout) == [ids[3]]
    cursor = re.search(r"--cursor (\S+)", first.stderr).group(1)  # type: ignore[union-attr]
    assert [c["id"] for c in listed("--cursor", cursor)] == ids[::-1][1:]


def test_tables_sent_to_a_pipe_keep_whole_ids(served_without_worker: Served, ukcancel: CliRun) -> None:
    """No terminal and no COLUMNS: Rich would fit 80 columns and cut ids; a pipe gets whole lines."""
    api = served_without_worker
    batch_id = client_of(api).submit_batch([(1001, ["LightCurve", "StandardPos"]), (1002, "all")])
    command_ids = api.runtime.batches.command_ids(batch_id)
    listing = ukcancel(api, "list", env={"COLUMNS": None})
    assert sorted(FULL_ID.findall(listing.stdout)) == sorted([*command_ids, batch_id, batch_id])
    items = ukcancel(api, "status", batch_id, "--items", env={"COLUMNS": None})
    assert set(FULL_ID.findall(items.stdout)) == {batch_id, *command_ids}
    # Plain tab-separated lines for scripts: a "# title" line, a header line, one line per row.
    lines = items.stdout.splitlines()
    lines = lines[lines.index(f"# Items of batch {batch_id}"):]  # after the batch's summary lines
    assert lines[1].split("\t") == ["#", "job", "products", "state", "status", "outcome", "command"]
    assert all(len(line.split("\t")) == 7 for line in lines[1:]) and "│" not in items.stdout


def test_tables_fit_the_terminal_one_line_per_row(served: Served, ukcancel: CliRun) -> None:
    """At 100 columns a batch's items, each with a long outcome, take one line each, within 100."""
    batch_id = client_of(served).submit_batch([(1001, "all"), (1002, "all")])
    client_of(served).wait_batch(batch_id)
    items = ukcancel(served, "status", batch_id, "--items", env={"COLUMNS": "100"})
    table = [line for line in items.stdout.splitlines() if line.startswith("│")]
    assert len(table) == 2, items.stdout  # one line per item
    assert all(len(line) <= 100 for line in items.stdout.splitlines()), items.stdout
    assert all(command_id in items.stdout for command_id in served.runtime.batches.command_ids(batch_id))
    assert "…" in items.stdout  # the long outcomes are cut in the terminal, whole in a pipe or --json


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "done"], "'done' is not one of"),
        (["--limit", "0"], "--limit"),
        (["--limit", "201"], "--limit"),
        (["--all", "--limit", "5"], "give one of them"),
        (["--created-after", "yesterday"], "--created-after"),
        (["--job", "-1"], "--job"),
        (["--cursor", "not-a-cursor"], "--cursor: Not a cursor this service issued."),  # refused by the service
    ],
)
def test_list_usage_errors_exit_2(served_without_worker: Served, ukcancel: CliRun, args: list[str],
                                  message: str) -> None:
    result = ukcancel(served_without_worker, "list", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_list_user_is_for_admin_tokens(served_without_worker: Served, ukcancel: CliRun) -> None:
    api = served_without_worker
    admin, _ = api.runtime.tokens.create("ops@example.org", name="ops", admin=True)
    theirs = client_of(api, admin).submit(1004, "all", user_id="other@example.org")
    client_of(api).submit(1001, "all")

    as_admin = ukcancel(api, "list", "--user", "other@example.org", "--json", env={"UKCANCEL_TOKEN": admin})
    assert as_admin.exit_code == 0, as_admin.output
    assert [c["id"] for c in json.loads(as_admin.stdout)["items"]] == [theirs]
    everyone = ukcancel(api, "list", "--json", env={"UKCANCEL_TOKEN": admin})
    assert len(json.loads(everyone.stdout)["items"]) == 2

    as_user = ukcancel(api, "list", "--user", "other@example.org")
    assert as_user.exit_code == 1 and "HTTP 403" in as_user.output


# -- ukcancel withdraw ---------------------------------------------------------------------------------------
def test_withdraw_a_queued_command_by_a_prefix_then_refuses_it(served_without_worker: Served,
                                                               ukcancel: CliRun) -> None:
    api = served_without_worker
    command_id = client_of(api).submit(1001, ["LightCurve"])
    result = ukcancel(api, "withdraw", command_id[:12])
    assert result.exit_code == 0, result.output
    assert f"command {command_id} (job 1001) withdrawn: aborted" in result.output
    assert api.runtime.registry.get(command_id).state == "aborted"
    assert api.simulator.state.log() == []  # the UKSSDC was never called

    again = ukcancel(api, "withdraw", command_id)
    assert again.exit_code == 1
    assert f"command {command_id} is aborted: only a queued command can be withdrawn" in again.output


def test_withdraw_a_batch_withdraws_its_queued_items(served_without_worker: Served, ukcancel: CliRun) -> None:
    api = served_without_worker
    batch_id = client_of(api).submit_batch([(1001, "all"), (1002, "all"), (1003, "all")])
    result = ukcancel(api, "withdraw", batch_id, "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["withdrawn"] == 3 and view["counts"]["aborted"] == 3
    table = ukcancel(api, "withdraw", batch_id)
    assert table.exit_code == 0 and "withdrew 0 queued items" in table.output


# -- waiting: --timeout, and no live worker --------------------------------------------------------------------
def test_waiting_without_a_live_worker_warns_at_once_and_timeout_ends_it_with_exit_3(
    served_without_worker: Served, ukcancel: CliRun
) -> None:
    api = served_without_worker
    started = time.monotonic()
    result = ukcancel(api, "cancel", "1001", "--wait", "--timeout", "1")
    assert time.monotonic() - started < 10
    assert result.exit_code == 3, result.output
    assert "warning:" in result.stderr and "no live worker" in result.stderr
    assert "still queued when --timeout ran out" in result.stderr
    # The warning comes before the wait, not after it: it precedes the result in the output.
    assert result.output.index("no live worker") < result.output.index("Cancellations")

    command_id = json.loads(ukcancel(api, "cancel", "1002", "--json").stdout)["id"]
    status = ukcancel(api, "status", command_id, "--wait", "--timeout", "1", "--json")
    assert status.exit_code == 3 and json.loads(status.stdout)["state"] == "queued"
    assert "no live worker" in status.stderr

    several = ukcancel(api, "cancel", "1001", "1002", "--wait", "--timeout", "1")
    assert several.exit_code == 3 and "no live worker" in several.stderr
    assert "batch still running when --timeout ran out" in several.stderr


def test_timeout_needs_wait(served_without_worker: Served, ukcancel: CliRun) -> None:
    for args in (["cancel", "1001"], ["status", "0" * 32], ["cancel", "1001", "--wait", "--timeout", "0"]):
        result = ukcancel(served_without_worker, *args, *([] if "--wait" in args else ["--timeout", "5"]))
        assert result.exit_code == 2, (args, result.output)


def test_status_wait_follows_a_command_to_its_end_without_a_warning(served: Served, ukcancel: CliRun) -> None:
    command_id = client_of(served).submit(1003, "all")
    result = ukcancel(served, "status", command_id, "--wait", "--timeout", "30", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "completed"
    assert "warning" not in result.stderr


# -- batches: a summary, items on request ----------------------------------------------------------------------
@pytest.fixture
def mixed_batch(served: Served) -> str:
    """A finished batch: 1001's light curve (status 1), 1003 all (2: already finished), 1004 (0: not ours)."""
    client = client_of(served)
    batch_id = client.submit_batch([(1001, ["LightCurve"]), (1003, "all"), (1004, "all")])
    assert client.wait_batch(batch_id, timeout=30, items=False)["state"] == "completed"
    return batch_id


def test_status_of_a_batch_is_a_summary_by_default(served: Served, ukcancel: CliRun, mixed_batch: str) -> None:
    result = ukcancel(served, "status", mixed_batch)
    assert result.exit_code == 1, result.output  # one item ended with 0
    assert f"batch {mixed_batch}: completed, 3 items, 100% done" in result.stdout
    assert "by state:  completed 3" in result.stdout
    assert "by result: 1 cancelled 1, 2 partly cancelled 1, 0 not cancelled 1, -1 error or withdrawn 0" in result.stdout
    assert "Items of batch" not in result.stdout and "1004" not in result.stdout
    assert f"ukcancel status {mixed_batch} --failed-only" in result.stderr


def test_status_items_and_failed_only(served: Served, ukcancel: CliRun, mixed_batch: str) -> None:
    items = ukcancel(served, "status", mixed_batch, "--items")
    assert items.exit_code == 1
    command_ids = served.runtime.batches.command_ids(mixed_batch)
    assert all(command_id in items.stdout for command_id in command_ids)  # whole ids, one row each
    assert all(f"│ {job} " in items.stdout for job in (1001, 1003, 1004))

    failed = ukcancel(served, "status", mixed_batch, "--failed-only")
    assert "│ 1003 " in failed.stdout and "│ 1004 " in failed.stdout and "│ 1001 " not in failed.stdout

    as_json = ukcancel(served, "status", mixed_batch, "--failed-only", "--json")
    assert [(i["job_id"], i["result"][0]) for i in json.loads(as_json.stdout)["items"]] == [(1003, 2), (1004, 0)]


def test_a_large_batch_waits_to_a_summary_and_lists_items_only_with_items(served: Served, ukcancel: CliRun,
                                                                          tmp_path: Path) -> None:
    admin, _ = served.runtime.tokens.create("ops@example.org", name="ops", admin=True)
    path = tmp_path / "bulk.csv"
    path.write_text("job_id,products\n" + "".join(f"{job},lc\n" for job in range(2001, 2151)))
    env = {"UKCANCEL_TOKEN": admin}

    result = ukcancel(served, "batch", str(path), "--user", "bulk@example.org", "--wait", "--timeout", "60", env=env)
    assert result.exit_code == 0, result.output
    assert "completed, 150 items, 100% done" in result.stdout and "1 cancelled 150" in result.stdout
    assert "Items of batch" not in result.stdout and len(result.stdout.splitlines()) < 10
    batch_id = FULL_ID.search(result.stdout).group(0)  # type: ignore[union-attr]

    listed = ukcancel(served, "status", batch_id, "--items", env=env)
    assert len(set(FULL_ID.findall(listed.stdout)) - {batch_id}) == 150


# -- ids: whole, or a unique start --------------------------------------------------------------------------------
def test_a_unique_prefix_names_a_command_or_a_batch_and_an_ambiguous_one_is_refused(
    served_without_worker: Served, ukcancel: CliRun
) -> None:
    api = served_without_worker
    client = client_of(api)
    batch_id = client.submit_batch([(1001 + i % 3, "all") for i in range(17)])
    command_id = client.submit(1002, ["Spectrum"])
    ids = [command_id, batch_id, *api.runtime.batches.command_ids(batch_id)]

    command = ukcancel(api, "status", command_id[:8], "--json")
    assert command.exit_code == 0, command.output
    assert json.loads(command.stdout)["id"] == command_id
    batch = ukcancel(api, "status", batch_id[:8].upper())
    assert batch.exit_code == 0 and f"batch {batch_id}: running, 17 items" in batch.stdout

    # 19 ids over 16 first characters: at least two share one.
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)
    ambiguous = ukcancel(api, "status", shared)
    assert ambiguous.exit_code == 2
    assert f"'{shared}' is ambiguous" in ambiguous.output and "give more characters" in ambiguous.output

    unused = next(p for p in (f"{n:06x}" for n in range(1000)) if not any(i.startswith(p) for i in ids))
    unknown = ukcancel(api, "withdraw", unused)
    assert unknown.exit_code == 2 and "has an id starting with" in unknown.output
    assert api.runtime.registry.get(command_id).state == "queued"


# -- the service's URL -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_url_without_scheme_suggests_one(served_without_worker: Served, ukcancel: CliRun, where: str) -> None:
    if where == "option":
        result = ukcancel(served_without_worker, "list", "--api-url", "localhost:8000")
    else:
        result = ukcancel(served_without_worker, "list", env={"UKCANCEL_API_URL": "localhost:8000"})
    assert result.exit_code == 2, result.output
    assert "did you mean http://localhost:8000?" in result.output and "Traceback" not in result.output


@pytest.fixture
def plain_text_server() -> Iterator[str]:
    """A web server that answers every request 200 with a plain-text page."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = b"It works!\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("args", [["status", "abc"], ["status", "0" * 32], ["list"], ["cancel", "1001"],
                                  ["withdraw", "0" * 32]])
def test_another_server_at_the_url_is_a_short_message_exit_1(served_without_worker: Served, ukcancel: CliRun,
                                                            plain_text_server: str, args: list[str]) -> None:
    simulator = served_without_worker.simulator.base_url  # answers an HTML 404 page
    for url, seen in ((simulator, "HTTP 404, text/html"), (plain_text_server, "HTTP 200, text/plain: 'It works!'")):
        result = ukcancel(served_without_worker, *args, "--api-url", url)
        assert result.exit_code == 1, result.output
        assert f"{url} does not answer as the ukssdc-cancel API ({seen}" in result.output
        assert "check --api-url" in result.output and "Traceback" not in result.output


# -- shell completion -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shell", "marker"), [("bash", "_ukcancel_completion"), ("zsh", "#compdef ukcancel"),
                                               ("fish", "complete --no-files --command ukcancel")])
def test_the_documented_completion_scripts_are_generated(shell: str, marker: str) -> None:
    env = {**os.environ, "_UKCANCEL_COMPLETE": f"{shell}_source"}
    result = subprocess.run([UKCANCEL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


def test_completion_offers_the_new_commands() -> None:
    env = {**os.environ, "_UKCANCEL_COMPLETE": "bash_complete", "COMP_WORDS": "ukcancel wi", "COMP_CWORD": "1"}
    result = subprocess.run([UKCANCEL], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,withdraw" in result.stdout.splitlines()


def test_ctrl_c_while_waiting_stops_the_wait_not_the_command(served_without_worker: Served, ukcancel: CliRun,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait", interrupted)
    result = ukcancel(served_without_worker, "cancel", "1001", "--wait")
    assert result.exit_code == 130
    command_id = FULL_ID.search(result.stderr).group(0)  # type: ignore[union-attr]
    assert f"stopped waiting; it goes on in the service: `ukcancel status {command_id}`" in result.stderr
    assert served_without_worker.runtime.registry.get(command_id).state == "queued"


def test_a_wait_during_a_fleet_pause_says_so_and_how_to_lift_it(served_without_worker: Served, ukcancel: CliRun) -> None:
    from ukcancel.fleet import record_heartbeat

    record_heartbeat(served_without_worker.runtime.connection, "w1@host")  # a live worker, but the fleet waits
    served_without_worker.runtime.gate.pause(600)
    result = ukcancel(served_without_worker, "cancel", "1001", "--wait", "--timeout", "1")
    assert "fleet paused for" in result.stderr and "ukcancel fleet --resume" in result.stderr


def test_one_of_a_thing_is_counted_in_the_singular(served: Served, ukcancel: CliRun) -> None:
    batch_id = client_of(served).submit_batch([(1001, ["LightCurve"])])
    result = ukcancel(served, "status", batch_id, "--wait")
    assert f"batch {batch_id}: completed, 1 item, 100% done" in result.stdout
    listing = ukcancel(served, "list", "--limit", "1")
    assert "1 command" in listing.stderr and "1 commands" not in listing.stderr
