"""The core's readers that the console and the CLI use instead of reading Redis keys themselves,
on fakeredis with an injected clock."""

from __future__ import annotations

import json

import fakeredis
import pytest
from support import FakeClock  # tests/support.py

from ukcancel import keys
from ukcancel.batch import Batch, BatchRegistry
from ukcancel.command import CancelCommand, CommandRegistry
from ukcancel.fleet import FleetGate, record_heartbeat, worker_heartbeats
from ukcancel.listing import CommandFilter, CommandListing
from ukcancel.schedule import Schedule
from ukcancel.sessions import ConsoleSessions
from ukcancel.settings import Settings
from ukcancel.stream import recent_dead_letters

A, B = "a@example.org", "b@example.org"


@pytest.fixture
def connection() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def schedule(connection: fakeredis.FakeRedis, fake_clock: FakeClock) -> Schedule:
    registry = CommandRegistry(connection, 3600, clock=fake_clock)
    return Schedule(connection, registry, lambda n: None, lanes=4, lease_seconds=10.0, clock=fake_clock)


def enqueue(schedule: Schedule, user: str, job_id: int, callback_url: str | None = None) -> CancelCommand:
    command = CancelCommand(job_id=job_id, user_id=user, products=["LightCurve"], callback_url=callback_url)
    schedule.enqueue([command])
    return command


def test_the_oldest_waiting_command_per_user_and_overall(schedule: Schedule, fake_clock: FakeClock) -> None:
    assert schedule.oldest_waiting_by_user() == {} and schedule.oldest_waiting_since() is None
    first_a = fake_clock.now
    enqueue(schedule, A, 1001)
    fake_clock.tick(5)
    enqueue(schedule, A, 1002)
    first_b = fake_clock.tick(5)
    enqueue(schedule, B, 1003)
    assert schedule.oldest_waiting_by_user() == {A: first_a, B: first_b}
    assert schedule.oldest_waiting_since() == first_a
    claim = schedule.claim("turn-1")  # A's head leaves the line: A's next command is its oldest
    assert claim is not None
    assert schedule.oldest_waiting_by_user()[A] == first_a + 5


def test_the_due_count_is_every_due_command_whenever_due(schedule: Schedule, fake_clock: FakeClock) -> None:
    for n in range(3):
        enqueue(schedule, A, 1001 + n)
    claims = [schedule.claim(f"turn-{n}") for n in range(3)]  # all three leased before any is due again
    for n, claim in enumerate(claims):
        assert claim is not None
        schedule.start(claim.command_id, f"turn-{n}")
        schedule.retry_later(claim.command_id, f"turn-{n}", fake_clock.now + (0 if n == 0 else 60), "HTTP 503")
    counts = schedule.counts()
    assert (counts.due_now, counts.due_later, counts.due) == (1, 2, 3)
    assert counts.due == schedule.connection.zcard(keys.DUE)


def test_a_command_s_callback_url_alone(schedule: Schedule) -> None:
    with_url = enqueue(schedule, A, 1001, "https://hooks.example.org/x")
    without = enqueue(schedule, A, 1002)
    assert schedule.registry.callback_url(with_url.id) == "https://hooks.example.org/x"
    assert schedule.registry.callback_url(without.id) is None
    assert schedule.registry.callback_url("0" * 32) is None


def test_a_listing_of_one_user_or_of_everyone(schedule: Schedule, fake_clock: FakeClock) -> None:
    a = enqueue(schedule, A, 1001)
    fake_clock.tick()
    b = enqueue(schedule, B, 1002)
    listing = CommandListing(schedule.registry)
    assert [c.id for c in listing.page_of(A, CommandFilter(), None, 10).items] == [a.id]
    assert [c.id for c in listing.page_of(None, CommandFilter(), None, 10).items] == [b.id, a.id]


def test_a_user_s_newest_batches_first(connection: fakeredis.FakeRedis, fake_clock: FakeClock) -> None:
    batches = BatchRegistry(connection, 3600, clock=fake_clock)
    made = []
    for _ in range(3):
        batch = Batch(A)
        pipe = connection.pipeline(transaction=True)
        batches.add(batch, [], pipe)
        pipe.execute()
        made.append(batch.id)
        fake_clock.tick()
    batches.add(Batch(B), [], pipe := connection.pipeline(transaction=True))
    pipe.execute()
    assert batches.recent_ids(A) == made[::-1]
    assert batches.recent_ids(A, 2) == made[:0:-1]


def test_worker_heartbeats_latest_first_and_the_fleet_status(connection: fakeredis.FakeRedis,
                                                             fake_clock: FakeClock) -> None:
    record_heartbeat(connection, "w1@host", now=100.0)
    record_heartbeat(connection, "w2@host", now=200.0)
    assert worker_heartbeats(connection) == [("w2@host", 200.0), ("w1@host", 100.0)]
    gate = FleetGate(connection, Settings(fleet_rate_per_second=5, fleet_max_in_flight=3), clock=fake_clock)
    assert gate.heartbeats() == worker_heartbeats(connection)
    gate.pause(30)
    assert gate.status() == {
        "rate_per_second": 5.0, "max_in_flight": 3, "in_flight": 0, "paused_seconds": 30.0,
        "breaker": "closed", "breaker_failures": 0, "breaker_retry_in_seconds": 0.0,
    }


def test_the_newest_dead_letters_with_their_reasons(connection: fakeredis.FakeRedis) -> None:
    connection.xadd(keys.DEADLETTER_STREAM, {"job_id": "x", "reason": json.dumps({"job_id": ["Not a valid integer."]}),
                                             "entry_id": "1-0"})
    connection.xadd(keys.DEADLETTER_STREAM, {"reason": "not JSON", "entry_id": "2-0"})
    newest, oldest = recent_dead_letters(connection, 10)
    assert newest["reason"] == "not JSON" and newest["fields"] == {"entry_id": "2-0"}
    assert oldest["reason"] == {"job_id": ["Not a valid integer."]}
    assert oldest["fields"] == {"job_id": "x", "entry_id": "1-0"}
    assert len(recent_dead_letters(connection, 1)) == 1


def test_a_console_session_lasts_until_closed_or_expired(connection: fakeredis.FakeRedis) -> None:
    sessions = ConsoleSessions(connection)
    assert not sessions.is_open("s1")
    sessions.open("s1", "alice", 60)
    assert sessions.is_open("s1") and 0 < connection.ttl(keys.console_session("s1")) <= 60
    sessions.close("s1")
    assert not sessions.is_open("s1")
