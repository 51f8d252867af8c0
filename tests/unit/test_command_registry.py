"""Command records and their atomic, forward-only transitions (`ukcancel.command`), on fakeredis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import FakeClock  # tests/support.py

from ukcancel import keys
from ukcancel.command import (
    ABORTED,
    COMPLETED,
    QUEUED,
    RETRYING,
    TERMINAL,
    CancelCommand,
    CommandRegistry,
    CommandState,
    Transition,
)
from ukcancel.listing import CommandFilter, CommandListing

TTL = 3600


@pytest.fixture
def connection() -> Iterator[fakeredis.FakeRedis]:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield conn
    conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def registry(connection: fakeredis.FakeRedis, clock: FakeClock) -> CommandRegistry:
    return CommandRegistry(connection, TTL, clock=clock)


def new(registry: CommandRegistry, products: list[str] | str = "all", user: str = "astro@example.org") -> CancelCommand:
    return registry.add(CancelCommand(job_id=1001, user_id=user, products=products, submitted_by="astro-tok"))


def states(command: CancelCommand) -> list[str]:
    return [entry["state"] for entry in command.history]


# ---- add / get -------------------------------------------------------------------------------


def test_add_then_get_round_trips_every_field(registry: CommandRegistry, clock: FakeClock) -> None:
    added = new(registry, ["LightCurve", "StandardPos"])
    got = registry.get(added.id)
    assert got is not None
    assert got == added
    assert (got.job_id, got.user_id, got.products) == (1001, "astro@example.org", ["LightCurve", "StandardPos"])
    assert got.state == QUEUED and got.attempts == 0 and got.result is None and got.last_error is None
    assert got.created_at == got.updated_at == clock.now
    assert got.history == [{"state": QUEUED, "at": clock.now}]
    assert got.submitted_by == "astro-tok"
    assert not got.terminal


def test_all_is_stored_as_the_string_all(registry: CommandRegistry) -> None:
    assert registry.get(new(registry, "all").id).products == "all"  # type: ignore[union-attr]


def test_unknown_ids_read_as_none(registry: CommandRegistry) -> None:
    assert registry.get("0" * 32) is None
    assert registry.transition("0" * 32, CommandState.RUNNING, (QUEUED,)).state is None
    assert registry.wait_terminal("0" * 32, 5) is None


def test_get_many_keeps_order_and_marks_missing(registry: CommandRegistry) -> None:
    a, b = new(registry), new(registry)
    got = registry.get_many([b.id, "f" * 32, a.id])
    assert [c.id if c else None for c in got] == [b.id, None, a.id]


def test_the_users_index_lists_newest_first(registry: CommandRegistry, clock: FakeClock) -> None:
    first = new(registry)
    clock.tick()
    second = new(registry)
    other = new(registry, user="other@example.org")
    listing = CommandListing(registry)

    def listed(user: str) -> list[str]:
        return [c.id for c in listing.page(keys.user_commands(user), CommandFilter(), None, 10).items]

    assert listed("astro@example.org") == [second.id, first.id]
    assert listed("other@example.org") == [other.id]


def test_records_expire_after_the_ttl_and_terminal_renews_it(
    registry: CommandRegistry, connection: fakeredis.FakeRedis
) -> None:
    command = new(registry)
    key = keys.command(command.id)
    assert 0 < connection.ttl(key) <= TTL
    assert 0 < connection.ttl(keys.user_commands(command.user_id)) <= TTL
    connection.expire(key, 10)
    registry.start_attempt(command.id)
    assert connection.ttl(key) <= 10  # non-terminal transitions leave the expiry alone
    registry.complete(command.id, [1, {}])
    assert TTL - 5 < connection.ttl(key) <= TTL


# ---- transitions ------------------------------------------------------------------------------


def test_the_normal_path_records_each_state_with_its_time(registry: CommandRegistry, clock: FakeClock) -> None:
    command = new(registry)
    t0 = clock.now
    assert registry.start_attempt(command.id).moved
    t1 = clock.tick()
    assert registry.mark_retrying(command.id, "HTTP 503").moved
    t2 = clock.tick()
    assert registry.start_attempt(command.id).moved
    t3 = clock.tick()
    assert registry.complete(command.id, [1, {"LightCurve": {"code": 0, "text": "ok"}}], server_ok=1).moved
    got = registry.get(command.id)
    assert got is not None
    assert got.history == [
        {"state": QUEUED, "at": t0},
        {"state": CommandState.RUNNING, "at": t0},
        {"state": RETRYING, "at": t1},
        {"state": CommandState.RUNNING, "at": t2},
        {"state": COMPLETED, "at": t3},
    ]
    assert got.state == COMPLETED and got.updated_at == t3
    assert got.result == [1, {"LightCurve": {"code": 0, "text": "ok"}}]
    assert got.server_ok == 1
    assert got.last_error == "HTTP 503"  # the last error seen is kept
    assert got.attempts == 0  # no request was sent: an attempt is counted by the call (below)


def test_attempts_count_only_runs_that_sent_a_request(registry: CommandRegistry) -> None:
    command = new(registry)
    registry.start_attempt(command.id)  # started, no request yet: not an attempt
    registry.mark_retrying(command.id, "waiting for capacity")
    registry.start_attempt(command.id)  # redelivery of a running command: not one either
    assert registry.get(command.id).attempts == 0  # type: ignore[union-attr]
    assert registry.record_progress(command.id, count_attempt=True)  # the run's first request
    assert registry.get(command.id).attempts == 1  # type: ignore[union-attr]


def test_a_completed_command_keeps_its_first_result_for_ever(registry: CommandRegistry) -> None:
    command = new(registry)
    registry.start_attempt(command.id)
    assert registry.complete(command.id, [1, {"first": True}]).moved
    for attempt in (
        lambda: registry.complete(command.id, [-1, {"ERROR": "second"}]),
        lambda: registry.start_attempt(command.id),
        lambda: registry.mark_retrying(command.id, "late"),
        lambda: registry.withdraw(command.id),
    ):
        outcome = attempt()
        assert not outcome.moved and outcome.state == COMPLETED
    assert not registry.record_progress(command.id, settled={"lc": {"code": 1, "text": "x"}})
    got = registry.get(command.id)
    assert got is not None
    assert got.result == [1, {"first": True}]
    assert states(got) == [QUEUED, CommandState.RUNNING, COMPLETED]
    assert got.settled == {}


def test_withdraw_only_from_queued(registry: CommandRegistry) -> None:
    queued = new(registry)
    outcome = registry.withdraw(queued.id)
    assert outcome.moved and outcome.state == ABORTED
    got = registry.get(queued.id)
    assert got is not None and got.state == ABORTED and got.terminal
    assert got.last_error == "withdrawn by the client"
    assert not registry.start_attempt(queued.id).moved  # a worker arriving later does nothing
    assert not registry.complete(queued.id, [1, {}]).moved
    assert registry.get(queued.id).result is None  # type: ignore[union-attr]

    running = new(registry)
    registry.start_attempt(running.id)
    refused = registry.withdraw(running.id)
    assert not refused.moved and refused.state == CommandState.RUNNING

    retrying = new(registry)
    registry.start_attempt(retrying.id)
    registry.mark_retrying(retrying.id, "HTTP 503")
    assert registry.withdraw(retrying.id).state == RETRYING


def test_retrying_only_from_running(registry: CommandRegistry) -> None:
    command = new(registry)
    refused = registry.mark_retrying(command.id, "too early")
    assert not refused.moved and refused.state == QUEUED


def test_progress_fields_round_trip_and_empty_values_delete(registry: CommandRegistry) -> None:
    command = new(registry)
    registry.start_attempt(command.id)
    assert registry.record_progress(
        command.id, resolved=["lc", "psf"], unlisted=True, ambiguous=True, settled={"psf": {"code": 0, "text": "ok"}}
    )
    got = registry.get(command.id)
    assert got is not None
    assert got.resolved == ["lc", "psf"] and got.unlisted and got.ambiguous
    assert got.settled == {"psf": {"code": 0, "text": "ok"}}
    registry.record_progress(command.id, ambiguous=False, resolved=None)
    got = registry.get(command.id)
    assert got is not None and not got.ambiguous and got.resolved is None


def test_transitions_publish_the_new_state(registry: CommandRegistry, connection: fakeredis.FakeRedis) -> None:
    command = new(registry)
    pubsub = connection.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.command_events(command.id))
    registry.start_attempt(command.id)
    registry.complete(command.id, [1, {}])
    registry.complete(command.id, [2, {}])  # refused: publishes nothing
    seen = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(seen) < 3:
        message = pubsub.get_message(timeout=0.1)
        if message:
            seen.append(message["data"].decode())
    pubsub.close()
    assert seen == [CommandState.RUNNING, COMPLETED]


# Random sequences of operations: states never move backwards, terminal is for ever.
ORDER = {QUEUED: 0, CommandState.RUNNING: 1, RETRYING: 1, COMPLETED: 2, ABORTED: 2}
OPERATIONS = ["start_attempt", "mark_retrying", "complete", "withdraw"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(OPERATIONS), max_size=12))
def test_random_operation_sequences_never_go_backwards(operations: list[str]) -> None:
    registry = CommandRegistry(fakeredis.FakeRedis(server=fakeredis.FakeServer()), TTL)
    command = new(registry)
    previous = QUEUED
    first_result = None
    for number, operation in enumerate(operations):
        if operation == "complete":
            outcome = registry.complete(command.id, [1, {"n": number}])
            if outcome.moved:
                first_result = [1, {"n": number}]
        elif operation == "mark_retrying":
            outcome = registry.mark_retrying(command.id, "x")
        else:
            outcome = getattr(registry, operation)(command.id)
        current = registry.get(command.id)
        assert current is not None and outcome.state == current.state
        assert ORDER[current.state] >= ORDER[previous]
        if previous in TERMINAL:
            assert current.state == previous and not outcome.moved
        previous = current.state
    final = registry.get(command.id)
    assert final is not None
    assert states(final)[0] == QUEUED
    assert sum(1 for s in states(final) if s in TERMINAL) == (1 if final.terminal else 0)
    assert final.result == first_result


def test_concurrent_completions_leave_exactly_one_result(registry: CommandRegistry) -> None:
    command = new(registry)
    registry.start_attempt(command.id)
    barrier = threading.Barrier(8)
    moved: list[bool] = []

    def complete(n: int) -> None:
        barrier.wait()
        moved.append(registry.complete(command.id, [1, {"winner": n}]).moved)

    threads = [threading.Thread(target=complete, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert moved.count(True) == 1 and len(moved) == 8
    got = registry.get(command.id)
    assert got is not None and states(got).count(COMPLETED) == 1


# ---- wait_terminal -------------------------------------------------------------------------------


def test_wait_terminal_wakes_when_another_thread_completes(connection: fakeredis.FakeRedis) -> None:
    registry = CommandRegistry(connection, TTL)
    command = new(registry)

    def finish() -> None:
        time.sleep(0.3)
        registry.start_attempt(command.id)
        registry.complete(command.id, [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}])

    worker = threading.Thread(target=finish)
    started = time.monotonic()
    worker.start()
    got = registry.wait_terminal(command.id, timeout=20)
    elapsed = time.monotonic() - started
    worker.join(5)
    assert got is not None and got.state == COMPLETED
    assert got.result == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]
    assert 0.25 <= elapsed < 5


def test_wait_terminal_times_out_with_the_command_as_it_stands_without_polling_the_record(
    registry: CommandRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = new(registry)
    registry.start_attempt(command.id)
    reads: list[str] = []
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda command_id: reads.append(command_id) or real_get(command_id))
    started = time.monotonic()
    got = registry.wait_terminal(command.id, timeout=1.5)
    elapsed = time.monotonic() - started
    assert got is not None and got.state == CommandState.RUNNING
    assert 1.4 <= elapsed < 4
    assert reads == [command.id]  # read once, then only the pub/sub socket until the deadline


def test_wait_terminal_returns_at_once_for_a_terminal_command(registry: CommandRegistry) -> None:
    command = new(registry)
    registry.withdraw(command.id)
    started = time.monotonic()
    got = registry.wait_terminal(command.id, timeout=30)
    assert got is not None and got.state == ABORTED
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("terminal", [COMPLETED, ABORTED])
def test_no_caller_can_move_a_terminal_command_even_by_listing_its_state(
    registry: CommandRegistry, terminal: str
) -> None:
    command = new(registry)
    if terminal == COMPLETED:
        registry.start_attempt(command.id)
        assert registry.complete(command.id, [1, {}]).moved
    else:
        assert registry.withdraw(command.id).moved
    refused = registry.transition(command.id, CommandState.RUNNING, (terminal,))
    assert refused == Transition(False, terminal)
    assert registry.get(command.id).state == terminal


# ---- the record's compact form ------------------------------------------------------------------


def test_history_is_compact_and_keeps_every_time_to_the_microsecond(connection: fakeredis.FakeRedis) -> None:
    clock = FakeClock(1_776_543_210.1234567)  # real-looking epoch times with sub-microsecond digits
    registry = CommandRegistry(connection, TTL, clock=clock)
    command = new(registry)
    times = [round(clock.now, 6)]
    for step, move in (
        (0.0012345678, lambda: registry.start_attempt(command.id)),
        (1.5, lambda: registry.mark_retrying(command.id, "HTTP 503")),
        (61.25, lambda: registry.start_attempt(command.id)),
        (0.0000004, lambda: registry.complete(command.id, [1, {}])),
    ):
        clock.tick(step)
        assert move().moved
        times.append(round(clock.now, 6))
    raw = connection.hgetall(keys.command(command.id))
    assert b"id" not in raw  # the id is the key's suffix
    assert all(len(value) <= 64 for value in raw.values())  # a listpack under Redis's default config
    got = registry.get(command.id)
    assert got is not None and got.id == command.id
    assert [entry["state"] for entry in got.history] == [QUEUED, CommandState.RUNNING, RETRYING, CommandState.RUNNING, COMPLETED]
    assert [entry["at"] for entry in got.history] == times
    assert got.created_at == times[0] and got.updated_at == times[-1]


def test_completion_drops_the_per_product_progress(registry: CommandRegistry, connection: fakeredis.FakeRedis) -> None:
    command = new(registry)
    registry.start_attempt(command.id)
    registry.record_progress(command.id, resolved=["lc"], settled={"lc": {"code": 0, "text": "ok"}})
    assert registry.complete(command.id, [1, {"LightCurve": {"code": 0, "text": "ok"}}]).moved
    assert not connection.hexists(keys.command(command.id), "settled")
    got = registry.get(command.id)
    assert got is not None and got.settled == {} and got.resolved == ["lc"]
    assert got.result == [1, {"LightCurve": {"code": 0, "text": "ok"}}]


def test_indexes_are_pruned_once_per_interval_not_on_every_insert(
    registry: CommandRegistry, connection: fakeredis.FakeRedis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = keys.user_commands("astro@example.org")
    first = new(registry)  # the process's first insert into the index prunes it
    clock.tick(TTL + 1)
    second = new(registry)  # within the interval: the stale entry stays (the listing skips it)
    assert {m.decode() for m in connection.zrange(index, 0, -1)} == {first.id, second.id}
    monkeypatch.setattr("ukcancel.command.PRUNE_INTERVAL_SECONDS", 0.0)
    third = new(registry)
    assert {m.decode() for m in connection.zrange(index, 0, -1)} == {second.id, third.id}
    assert {m.decode() for m in connection.zrange(keys.ALL_COMMANDS, 0, -1)} == {second.id, third.id}
