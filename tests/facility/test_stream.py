"""The command stream (``ukcancel:commands``) and the results stream, against the real Redis server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from facility_api import ALICE, BOB, Facility, build_facility

from ukcancel import keys
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.stream import CommandStreamConsumer, request_from_fields

UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))


@pytest.fixture
def on_redis(redis_url: str) -> Iterator[Facility]:
    built = build_facility(Settings(redis_url=redis_url))
    yield built
    built.runtime.connection.close()


def consumer(facility: Facility, name: str = "c1", **options: Any) -> CommandStreamConsumer:
    options = {"block_ms": 10, "min_idle_ms": 60_000, **options}
    made = CommandStreamConsumer(facility.runtime, name, **options)
    made.ensure_group()
    return made


def xadd(facility: Facility, **fields: str) -> str:
    return facility.runtime.connection.xadd(keys.COMMAND_STREAM, fields).decode()


def entries(facility: Facility, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in facility.runtime.connection.xrange(stream)
    ]


def pending(facility: Facility) -> int:
    return facility.runtime.connection.xpending(keys.COMMAND_STREAM, keys.COMMAND_STREAM_GROUP)["pending"]


def test_a_valid_entry_becomes_a_command_and_is_announced(on_redis: Facility) -> None:
    reader = consumer(on_redis)
    entry_id = xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001", products='["lc","StandardPos"]',
                    request_id="pipeline-17")
    [handled] = reader.step()
    assert handled.command_id and handled.reason is None

    [accepted] = entries(on_redis, keys.ACCEPTED_STREAM)
    assert accepted == {"entry_id": entry_id, "command_id": handled.command_id, "request_id": "pipeline-17"}
    command = on_redis.runtime.registry.get(handled.command_id)
    assert command is not None
    assert (command.job_id, command.user_id, command.products) == (1001, ALICE, ["LightCurve", "StandardPos"])
    assert command.submitted_by == "alice" and command.state == "queued"
    assert on_redis.runtime.schedule.depth() == {ALICE: 1}  # in line like an HTTP submission
    # EntryOutcome: acknowledged and deleted, so the token does not stay in the stream.
    assert pending(on_redis) == 0
    assert on_redis.runtime.connection.xlen(keys.COMMAND_STREAM) == 0
    # The HTTP API shows it like any other command of alice's.
    listed = on_redis.call("GET", "/v1/cancellations", "alice").get_json()["items"]
    assert [item["id"] for item in listed] == [handled.command_id]


@pytest.mark.parametrize(
    ("products", "loaded"),
    [("lc,psf", ["LightCurve", "StandardPos"]), ("all", "all"), ('"all"', "all"), ('["Spectrum"]', ["Spectrum"]),
     (" LightCurve , spec ", ["LightCurve", "Spectrum"])],
)
def test_products_as_json_or_a_comma_list(on_redis: Facility, products: str, loaded: Any) -> None:
    reader = consumer(on_redis)
    xadd(on_redis, token=on_redis.tokens["alice"], job_id="1002", products=products)
    [handled] = reader.step()
    assert on_redis.runtime.registry.get(handled.command_id).products == loaded  # type: ignore[union-attr]


def test_entry_fields_decode_to_the_json_the_http_api_takes() -> None:
    assert request_from_fields({"token": "t", "request_id": "r", "job_id": "12", "user_id": "u@example.org"}) == {
        "job_id": 12, "user_id": "u@example.org"}
    assert request_from_fields({"job_id": "twelve"}) == {"job_id": "twelve"}  # left for the schema to refuse


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"job_id": "abc"}, "job_id", "Not a valid integer."),
        ({"job_id": "1.5"}, "job_id", "Not a valid integer."),
        ({"job_id": "0"}, "job_id", "Must be greater than or equal to 1"),
        ({"job_id": "1001", "products": "lc,nonsense"}, "products", "nonsense"),
        ({"job_id": "1001", "products": "[\"lc\""}, "products", 'Must be "all"'),
        ({"job_id": "1001", "priority": "high"}, "priority", "Unknown field."),
        ({"products": "lc"}, "job_id", "Missing data for required field."),
        ({"job_id": "1001", "user_id": BOB}, "user_id", "may not act for another user_id"),
        ({"job_id": "1001", "callback_url": "http://elsewhere.example.org/hook"}, "callback_url", "not allowed"),
    ],
)
def test_an_invalid_entry_is_dead_lettered_with_the_reason(
    on_redis: Facility, fields: dict[str, str], field: str, message: str
) -> None:
    reader = consumer(on_redis)
    token = on_redis.tokens["alice"]
    entry_id = xadd(on_redis, token=token, request_id="r-9", **fields)
    [handled] = reader.step()
    assert handled.command_id is None

    [letter] = entries(on_redis, keys.DEADLETTER_STREAM)
    reason = json.loads(letter.pop("reason"))
    assert any(message in text for text in reason[field]), reason
    assert letter.pop("entry_id") == entry_id
    assert letter.pop("token") == token[:10] + "..."  # never the whole bearer token
    assert letter == {"request_id": "r-9", **fields}
    assert on_redis.command_ids() == set()
    assert entries(on_redis, keys.ACCEPTED_STREAM) == []
    assert pending(on_redis) == 0


@pytest.mark.parametrize("token", [None, "ukc_not-a-token", "revoked"])
def test_an_entry_without_a_valid_token_is_dead_lettered(on_redis: Facility, token: str | None) -> None:
    reader = consumer(on_redis)
    fields = {"job_id": "1001"}
    if token == "revoked":
        token = on_redis.tokens["alice"]
        on_redis.runtime.tokens.revoke("alice")
    if token is not None:
        fields["token"] = token
    xadd(on_redis, **fields)
    reader.step()
    [letter] = entries(on_redis, keys.DEADLETTER_STREAM)
    assert "token" in json.loads(letter["reason"])
    assert on_redis.command_ids() == set()


def test_an_admin_token_may_act_for_a_user(on_redis: Facility) -> None:
    reader = consumer(on_redis)
    xadd(on_redis, token=on_redis.tokens["ops"], job_id="1004", user_id=BOB)
    [handled] = reader.step()
    assert on_redis.runtime.registry.get(handled.command_id).user_id == BOB  # type: ignore[union-attr]


def test_an_entry_read_by_a_consumer_that_died_is_taken_over_and_handled_once(on_redis: Facility) -> None:
    doomed = consumer(on_redis, "doomed")
    entry_id = xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001")
    assert [e for e, _ in doomed._read(">", block=None)] == [entry_id]  # read, then "killed": never acked
    assert pending(on_redis) == 1

    heir = consumer(on_redis, "heir", min_idle_ms=0)
    handled = heir.step()
    assert [h.entry_id for h in handled] == [entry_id] and handled[0].command_id
    assert heir.step() == []  # nothing left, nothing twice
    assert len(on_redis.command_ids()) == 1
    assert len(entries(on_redis, keys.ACCEPTED_STREAM)) == 1
    assert pending(on_redis) == 0


def test_a_crash_between_enqueue_and_ack_makes_no_second_command(on_redis: Facility) -> None:
    doomed = consumer(on_redis, "doomed")
    entry_id = xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001", request_id="r-1")

    def killed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before XACK")

    doomed._ack_and_publish = killed  # the command is enqueued, then the process dies
    [left] = doomed.step()
    assert left.pending
    [first] = on_redis.command_ids()
    assert pending(on_redis) == 1 and entries(on_redis, keys.ACCEPTED_STREAM) == []

    heir = consumer(on_redis, "heir", min_idle_ms=0)
    [handled] = heir.step()
    assert handled.command_id == first
    assert on_redis.command_ids() == {first}
    assert on_redis.runtime.schedule.depth() == {ALICE: 1}
    assert entries(on_redis, keys.ACCEPTED_STREAM) == [{"entry_id": entry_id, "command_id": first, "request_id": "r-1"}]
    assert on_redis.runtime.connection.get(keys.stream_entry(entry_id)).decode() == f"{first}|"


def test_a_pending_entry_deleted_from_the_stream_is_reported_not_dropped(on_redis: Facility) -> None:
    doomed = consumer(on_redis, "doomed")
    entry_id = xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001")
    doomed._read(">", block=None)
    on_redis.runtime.connection.xdel(keys.COMMAND_STREAM, entry_id)
    [handled] = consumer(on_redis, "heir", min_idle_ms=0).step()
    assert handled.reason is not None
    [letter] = entries(on_redis, keys.DEADLETTER_STREAM)
    assert letter["entry_id"] == entry_id and "deleted" in letter["reason"]
    assert pending(on_redis) == 0 and on_redis.command_ids() == set()


def test_a_restarted_consumer_finishes_its_own_pending_entries_first(on_redis: Facility) -> None:
    before = consumer(on_redis, "steady-name")
    xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001")
    before._read(">", block=None)  # then the process restarts
    after = consumer(on_redis, "steady-name")  # min idle 60 s: no takeover needed for its own
    [handled] = after.step()
    assert handled.command_id and pending(on_redis) == 0


def test_an_entry_that_keeps_failing_is_dead_lettered_after_max_deliveries(on_redis: Facility) -> None:
    reader = consumer(on_redis, "flaky", min_idle_ms=0, max_deliveries=2)
    xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001")

    def defect(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a defect")

    reader.validate = defect  # type: ignore[method-assign]
    for _ in range(3):
        reader.step()
    [letter] = entries(on_redis, keys.DEADLETTER_STREAM)
    assert "deliveries" in json.loads(letter["reason"])["_entry"][0]
    assert pending(on_redis) == 0 and on_redis.command_ids() == set()


def test_a_broker_outage_leaves_the_entry_pending_for_a_retry(on_redis: Facility) -> None:
    from kombu.exceptions import OperationalError

    reader = consumer(on_redis, "c", min_idle_ms=0)
    queue = on_redis.runtime.schedule
    working = queue.dispatch

    def broker_down(count: int) -> None:
        raise OperationalError("connection refused")

    queue.dispatch = broker_down
    xadd(on_redis, token=on_redis.tokens["alice"], job_id="1001")
    [left] = reader.step()
    assert left.pending and pending(on_redis) == 1
    queue.dispatch = working
    [handled] = reader.step()
    command = on_redis.runtime.registry.get(handled.command_id)  # type: ignore[arg-type]
    assert command is not None and command.state == "queued"
    assert len(entries(on_redis, keys.ACCEPTED_STREAM)) == 1


def test_withdrawn_commands_reach_the_results_stream(on_redis: Facility) -> None:
    command_id = on_redis.submit("alice", {"job_id": 1003})
    assert on_redis.call("DELETE", f"/v1/cancellations/{command_id}", "alice").status_code == 200
    [result] = entries(on_redis, keys.RESULTS_STREAM)
    assert result == {"command_id": command_id, "user_id": ALICE, "job_id": "1003", "state": "aborted",
                      "result": "null", "error": "withdrawn by the client"}


def test_the_embedded_consumer_thread_works_on_fakeredis(facility: Facility) -> None:
    with CommandStreamConsumer(facility.runtime, "embedded", block_ms=50).running():
        entry_id = facility.runtime.connection.xadd(
            keys.COMMAND_STREAM, {"token": facility.tokens["alice"], "job_id": "1001"}
        ).decode()
        accepted = wait_for(lambda: entries(facility, keys.ACCEPTED_STREAM), 10)
    assert accepted[0]["entry_id"] == entry_id
    assert facility.runtime.registry.get(accepted[0]["command_id"]) is not None


# -- end to end: a consumer process, a worker process, the simulator ----------------------------
def test_stream_to_results_through_real_processes(
    redis_url: str, simulator: SimulatorServer, worker_factory: Any, make_worker_env: Callable[..., dict[str, str]]
) -> None:
    env = make_worker_env(redis_url, simulator)
    worker_factory(env)
    client = redis.Redis.from_url(redis_url)
    facility = build_facility(Settings(redis_url=redis_url))
    consumer_process = subprocess.Popen(
        [UKCANCEL, "stream-consumer", "--name", "e2e", "--block-seconds", "0.2"],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        entry_id = client.xadd(keys.COMMAND_STREAM, {"token": facility.tokens["alice"], "job_id": "1001",
                                                     "products": "lc", "request_id": "e2e-1"}).decode()
        accepted = wait_for(lambda: entries(facility, keys.ACCEPTED_STREAM), 20)
        assert accepted == [{"entry_id": entry_id, "command_id": accepted[0]["command_id"], "request_id": "e2e-1"}]
        results = wait_for(lambda: entries(facility, keys.RESULTS_STREAM), 30)
    finally:
        consumer_process.send_signal(signal.SIGTERM)
        _, stderr = consumer_process.communicate(timeout=15)
    assert consumer_process.returncode == 0, stderr.decode()
    [result] = results
    assert result["command_id"] == accepted[0]["command_id"] and result["state"] == "completed"
    assert json.loads(result["result"]) == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]


def wait_for(probe: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing after {seconds} s")
