"""The command stream against a flood and a hostile pipeline, on the real Redis server: oversized and
deeply nested entries dead-lettered at once with a precise reason, acknowledgement only after the
outcome is written, secrets redacted in dead letters, a bounded dead-letter stream, and the ACL
recipe of docs/operators/security.md (users created by the test, removed after)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from facility_api import Facility, build_facility

from ukcancel import keys
from ukcancel.settings import Settings
from ukcancel.stream import CommandStreamConsumer


@pytest.fixture
def on_redis(redis_url: str) -> Iterator[Facility]:
    built = build_facility(Settings(redis_url=redis_url, deadletter_maxlen=50, pipeline_streams=("p1", "p2"),
                                    callback_allowed_hosts=("hooks.example.org",)))
    built.runtime.dispatch.send_turns = lambda count: None  # type: ignore[method-assign]  # no worker here
    yield built
    built.runtime.connection.close()


def consumer(facility: Facility) -> CommandStreamConsumer:
    made = CommandStreamConsumer(facility.runtime, "c1", block_ms=10, min_idle_ms=60_000)
    made.ensure_group()
    return made


def letters(facility: Facility) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in facility.runtime.connection.xrange(keys.DEADLETTER_STREAM)]


def pending(facility: Facility, stream: str = keys.COMMAND_STREAM) -> int:
    return facility.runtime.connection.xpending(stream, keys.COMMAND_STREAM_GROUP)["pending"]


def test_an_entry_with_thousands_of_fields_is_dead_lettered_at_once(on_redis: Facility) -> None:
    reader = consumer(on_redis)
    token = on_redis.tokens["alice"]
    fields = {"token": token, "job_id": "1001", **{f"f{i}": "x" for i in range(5000)}}
    entry_id = on_redis.runtime.connection.xadd(keys.COMMAND_STREAM, fields).decode()
    [outcome] = reader.step()
    assert outcome.reason == {"_entry": ["5002 fields; an entry has at most 16."]}
    [letter] = letters(on_redis)
    assert letter["entry_id"] == entry_id and letter["token"] == token[:10] + "..."
    assert letter["_omitted_fields"] == str(5002 - 16) and len(letter) <= 16 + 3
    assert pending(on_redis) == 0 and on_redis.runtime.connection.xlen(keys.COMMAND_STREAM) == 0  # no token at rest


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"job_id": "1001", "products": "l" * 20_000}, "products", "20000 bytes; a value has at most 16384."),
        ({"job_id": "1001", "products": "[" * 10_000}, "products", "JSON nested deeper than 32 levels."),
        ({"job_id": "1001", "products": "[" * 40 + "]" * 40}, "products", "JSON nested deeper than 32 levels."),
        ({"job_id": "[" * 900 + "]" * 900}, "job_id", "JSON nested deeper than 32 levels."),
        ({"job_id": "1001", **{f"v{i}": "y" * 9000 for i in range(8)}}, "_entry", "bytes; an entry has at most 65536."),
    ],
)
def test_oversized_or_nested_entries_are_dead_lettered_on_first_delivery(
    on_redis: Facility, fields: dict[str, str], field: str, message: str
) -> None:
    reader = consumer(on_redis)
    on_redis.runtime.connection.xadd(keys.COMMAND_STREAM, {"token": on_redis.tokens["alice"], **fields})
    [outcome] = reader.step()
    assert outcome.reason is not None and message in outcome.reason[field][0]
    [letter] = letters(on_redis)
    assert message in json.loads(letter["reason"])[field][0]
    assert all(len(value) < 600 for value in letter.values())  # values cut in the letter
    assert pending(on_redis) == 0


def test_an_entry_stays_pending_when_its_outcome_cannot_be_written(on_redis: Facility) -> None:
    reader = consumer(on_redis)
    connection = on_redis.runtime.connection
    connection.set(keys.DEADLETTER_STREAM, "not a stream")  # XADD to it fails (WRONGTYPE)
    entry_id = connection.xadd(keys.COMMAND_STREAM, {"token": on_redis.tokens["alice"], "job_id": "abc"}).decode()
    with pytest.raises(redis.ResponseError):
        reader.step()
    assert pending(on_redis) == 1  # not acknowledged: it is handled again once the outcome can be written
    connection.delete(keys.DEADLETTER_STREAM)
    [outcome] = reader.handle_all([(entry_id, {"token": on_redis.tokens["alice"], "job_id": "abc"})])
    assert outcome.reason is not None and pending(on_redis) == 0


def test_secrets_are_redacted_in_dead_letters_as_in_logs(on_redis: Facility) -> None:
    reader = consumer(on_redis)
    other = on_redis.tokens["bob"]
    on_redis.runtime.connection.xadd(keys.COMMAND_STREAM, {
        "token": on_redis.tokens["alice"], "job_id": "abc",
        "callback_url": "https://hook:hunter2@hooks.example.org/x", "request_id": f"Bearer {other}",
        "user_id": "whsec_c2VjcmV0c2VjcmV0"})
    reader.step()
    [letter] = letters(on_redis)
    text = json.dumps(letter)
    assert "hunter2" not in text and other not in text and "whsec_c2VjcmV0c2VjcmV0" not in text
    assert on_redis.tokens["alice"] not in text
    assert letter["callback_url"] == "https://hook:[redacted]@hooks.example.org/x"


def test_the_dead_letter_stream_is_bounded(on_redis: Facility) -> None:
    reader = consumer(on_redis)
    connection = on_redis.runtime.connection
    for _ in range(400):
        connection.xadd(keys.COMMAND_STREAM, {"job_id": "1001"})  # no token: dead-lettered
    while connection.xlen(keys.COMMAND_STREAM):
        reader.step()
    assert connection.xlen(keys.DEADLETTER_STREAM) <= 50 + 100  # MAXLEN ~ 50: trimmed a whole node at a time


# -- the ACL recipe ------------------------------------------------------------------------------------
def acl_rules(pipeline: str, password: str) -> list[str]:
    """docs/operators/security.md's recipe for one pipeline, as ACL SETUSER rules."""
    return ["on", f">{password}", "resetkeys", "resetchannels", "-@all",
            "+xadd", f"%W~ukcancel:commands:from:{pipeline}",
            "+xread", "+xrange", "+xrevrange", "+xlen", "+ping", "+select",
            "%R~ukcancel:results", "%R~ukcancel:commands:accepted", "%R~ukcancel:deadletter"]


@pytest.fixture
def pipeline_users(on_redis: Facility, redis_url: str) -> Iterator[dict[str, redis.Redis]]:
    admin = on_redis.runtime.connection
    made: dict[str, redis.Redis] = {}
    names = []
    try:
        for pipeline in ("p1", "p2"):
            name, password = f"ukcancel-test-{pipeline}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
            names.append(name)
            admin.execute_command("ACL", "SETUSER", name, *acl_rules(pipeline, password))
            parts = urlsplit(redis_url)
            netloc = f"{name}:{password}@{parts.hostname}:{parts.port}"
            made[pipeline] = redis.Redis.from_url(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
        yield made
    finally:
        for client in made.values():
            client.close()
        for name in names:
            admin.execute_command("ACL", "DELUSER", name)


def denied(call: Any) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.ResponseError as exc:
        return "NOPERM" in str(exc)
    return False


def test_a_pipeline_appends_and_reads_outcomes_but_cannot_forge_trim_or_delete(
    on_redis: Facility, pipeline_users: dict[str, redis.Redis]
) -> None:
    reader = consumer(on_redis)
    p1, p2 = pipeline_users["p1"], pipeline_users["p2"]
    mine = p1.xadd(keys.pipeline_stream("p1"), {"token": on_redis.tokens["alice"], "job_id": "1001"}).decode()
    theirs = p2.xadd(keys.pipeline_stream("p2"), {"token": on_redis.tokens["bob"], "job_id": "1004"}).decode()
    reader.step()
    accepted = {fields[b"entry_id"].decode() for _, fields in p1.xrange(keys.ACCEPTED_STREAM)}
    assert accepted == {f"p1/{mine}", f"p2/{theirs}"}  # outcomes are readable
    assert on_redis.runtime.connection.xlen(keys.RESULTS_STREAM) == 0 and p1.xlen(keys.RESULTS_STREAM) == 0

    connection = on_redis.runtime.connection
    p2.xadd(keys.pipeline_stream("p2"), {"token": on_redis.tokens["bob"], "job_id": "1005"})  # not yet read
    forged = {"command_id": "x", "user_id": "astro@example.org", "job_id": "1", "state": "completed"}
    for attempt in (
        lambda: p1.xadd(keys.RESULTS_STREAM, forged),  # forge an outcome
        lambda: p1.xadd(keys.ACCEPTED_STREAM, {"entry_id": "1-0", "command_id": "x"}),
        lambda: p1.xadd(keys.DEADLETTER_STREAM, {"reason": "{}"}),
        lambda: p1.xadd(keys.pipeline_stream("p2"), {"job_id": "1"}, maxlen=0),  # trim another's stream
        lambda: p1.xadd(keys.COMMAND_STREAM, {"job_id": "1"}, maxlen=0),  # or the shared one
        lambda: p1.xtrim(keys.RESULTS_STREAM, maxlen=0),
        lambda: p1.xdel(keys.ACCEPTED_STREAM, "0-1"),
        lambda: p1.delete(keys.RESULTS_STREAM),
        lambda: p1.xrange(keys.pipeline_stream("p2")),  # read another pipeline's tokens
        lambda: p1.xreadgroup(keys.COMMAND_STREAM_GROUP, "evil", {keys.pipeline_stream("p2"): ">"}),
        lambda: p1.hgetall(keys.token("0" * 64)),
    ):
        assert denied(attempt)
    assert connection.xlen(keys.pipeline_stream("p2")) == 1  # p2's unread entry is still there
    assert connection.xlen(keys.ACCEPTED_STREAM) == 2
    [handled] = reader.step()
    assert handled.command_id is not None
