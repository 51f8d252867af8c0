"""Fair dispatch between UKSSDC users (`ukcancel.schedule.Schedule`), on fakeredis."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from fakeredis._socket import _base as fakeredis_socket
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ukcancel import keys
from ukcancel.command import QUEUED, CancelCommand, CommandRegistry
from ukcancel.schedule import Schedule
from ukcancel.settings import MIN_FLEET_RATE_PER_SECOND

A, B, C = "a@example.org", "b@example.org", "c@example.org"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, count: int) -> None:
        self.calls.append(count)


def make_queue() -> tuple[Schedule, Recorder]:
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    recorder = Recorder()
    return Schedule(connection, CommandRegistry(connection, 3600), recorder), recorder


@pytest.fixture
def schedule() -> Schedule:
    return make_queue()[0]


def commands(user: str, count: int) -> list[CancelCommand]:
    return [CancelCommand(job_id=1000 + n, user_id=user, products="all") for n in range(count)]


def drain(schedule: Schedule, prefix: str = "t") -> list[str]:
    taken = []
    for n in range(1000):
        claim = schedule.claim(f"{prefix}{n}")
        if claim is None:
            return taken
        taken.append(claim.command_id)
    raise AssertionError("the schedule never ran dry")


def test_enqueue_stores_records_and_sends_a_turn_per_command_up_to_the_lanes() -> None:
    schedule, recorder = make_queue()
    batch = commands(A, 3) + commands(B, 2)
    schedule.enqueue(batch)
    schedule.enqueue(commands(C, 50))
    # 5 turns are on their way (none has started): the second enqueue tops them up to the lanes.
    assert recorder.calls == [5, schedule.lanes - 5]
    for command in batch:
        stored = schedule.registry.get(command.id)
        assert stored is not None and stored.state == QUEUED
    assert schedule.depth() == {A: 3, B: 2, C: 50}


def test_a_big_batch_of_one_user_does_not_starve_another_user(schedule: Schedule) -> None:
    many = commands(A, 5)
    schedule.enqueue(many)
    single = commands(B, 1)
    schedule.enqueue(single)
    order = drain(schedule)
    # A's first command had the head of the line; B's single command comes right after it.
    assert order == [many[0].id, single[0].id, *[c.id for c in many[1:]]]


def test_round_robin_between_three_users_keeps_each_users_order(schedule: Schedule) -> None:
    a, b, c = commands(A, 3), commands(B, 2), commands(C, 1)
    schedule.enqueue(a + b + c)
    assert drain(schedule) == [a[0].id, b[0].id, c[0].id, a[1].id, b[1].id, a[2].id]
    assert schedule.depth() == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(1, 4)), min_size=1, max_size=6))
def test_every_command_is_handed_out_exactly_once_and_fairly(plan: list[tuple[str, int]]) -> None:
    schedule, recorder = make_queue()
    by_user: dict[str, list[str]] = {}
    for user, count in plan:
        batch = commands(user, count)
        schedule.enqueue(batch)
        by_user.setdefault(user, []).extend(c.id for c in batch)
    order = drain(schedule)
    assert sorted(order) == sorted(i for ids in by_user.values() for i in ids)
    # Turns on their way cover later commands: as many turns as lanes, never one per command.
    assert sum(recorder.calls) == min(len(order), schedule.lanes)
    owner = {i: user for user, ids in by_user.items() for i in ids}
    for user, ids in by_user.items():
        assert [i for i in order if owner[i] == user] == ids  # each user's own order kept
    # While every user still has work, no user gets a second turn before the others had one.
    remaining = {user: len(ids) for user, ids in by_user.items()}
    window: list[str] = []
    for command_id in order:
        user = owner[command_id]
        if all(remaining.values()):
            assert user not in window
            window.append(user)
            if len(window) == len(remaining):
                window = []
        remaining[user] -= 1


def test_remove_waiting_takes_a_command_out_of_line(schedule: Schedule) -> None:
    a = commands(A, 3)
    b = commands(B, 1)
    schedule.enqueue(a + b)
    schedule.remove_waiting(a[1])
    assert schedule.depth() == {A: 2, B: 1}
    assert drain(schedule) == [a[0].id, b[0].id, a[2].id]


def test_a_user_whose_line_emptied_while_on_the_ring_is_skipped_then_served_again(schedule: Schedule) -> None:
    only = commands(A, 1)
    schedule.enqueue(only)
    schedule.remove_waiting(only[0])
    assert schedule.claim("t1") is None
    later = commands(A, 2)
    schedule.enqueue(later)
    assert drain(schedule, "u") == [c.id for c in later]


def test_claim_on_an_empty_queue_takes_nothing(schedule: Schedule) -> None:
    assert schedule.claim("t") is None
    assert schedule.connection.zcard(keys.LEASES) == 0
    assert schedule.depth() == {}


def test_staging_into_a_given_pipeline_leaves_its_execution_to_the_caller(schedule: Schedule) -> None:
    """rq's convention: a method given a pipeline never executes it."""
    pipe = schedule.connection.pipeline(transaction=True)
    batch = commands(A, 2)
    sent: list[int] = []
    schedule.dispatch = sent.append
    staged = schedule.stage(batch, pipe)
    assert schedule.registry.get(batch[0].id) is None and sent == []  # nothing written, no turn yet
    staged.send_turns(pipe.execute())
    assert schedule.registry.get(batch[0].id) is not None and sent == [2]
    assert drain(schedule) == [c.id for c in batch]


def test_a_user_whose_line_was_emptied_by_a_withdrawal_is_on_the_ring_once() -> None:
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    registry = CommandRegistry(connection, ttl_seconds=3600)
    line = Schedule(connection, registry, dispatch=lambda n: None)
    first = CancelCommand(job_id=1, user_id="a@example.org", products=["LightCurve"])
    line.enqueue([first])
    line.remove_waiting(first)  # the list is empty, the user still on the ring
    line.enqueue([CancelCommand(job_id=2, user_id="a@example.org", products=["LightCurve"])])
    assert connection.lrange(keys.FAIR_USERS, 0, -1) == [b"a@example.org"]


def test_a_newcomer_is_claimed_next_while_a_backlog_runs(schedule: Schedule) -> None:
    backlog = commands(A, 50)
    schedule.enqueue(backlog)
    assert [schedule.claim(f"t{n}").command_id for n in range(3)] == [c.id for c in backlog[:3]]
    single = commands(B, 1)
    schedule.enqueue(single)
    # The round robin alone would hand out one more backlog command first (B joined at the tail).
    assert schedule.claim("t3").command_id == single[0].id
    assert schedule.claim("t4").command_id == backlog[3].id


def test_a_second_newcomer_waits_until_a_user_in_line_was_served(schedule: Schedule) -> None:
    backlog = commands(A, 50)
    schedule.enqueue(backlog)
    schedule.claim("t0")
    schedule.claim("t1")  # the mark A's own arrival set is cleared: the ring has moved on
    first, second = commands(B, 1), commands(C, 1)
    schedule.enqueue(first)
    schedule.enqueue(second)  # B went ahead and has not been served yet: C joins at the tail
    order = [schedule.claim(f"u{n}").command_id for n in range(3)]
    assert order == [first[0].id, backlog[2].id, second[0].id]


D = "d@example.org"


@settings(max_examples=200, deadline=None)
# Found by this test: a user whose single commands came one after another was a newcomer each time
# and went ahead twice while a@example.org waited in line (now it joins at the tail until its turn
# would have come round).
@example(steps=[(D, 3), "claim", "claim", (A, 2), (B, 1), "claim", "claim", (D, 1), "claim", "claim", (D, 1)])
@given(st.lists(st.one_of(st.just("claim"), st.tuples(st.sampled_from([A, B, C, D]), st.integers(1, 3))),
                min_size=1, max_size=40))
def test_newcomers_going_ahead_keep_every_users_order_and_starve_nobody(steps: list[Any]) -> None:
    schedule, _ = make_queue()
    owner: dict[str, str] = {}
    queued: dict[str, list[str]] = {}
    served: list[str] = []  # users, in claim order
    in_line_since: dict[str, int] = {}  # a user with work waiting -> claims made when it last got one

    def claim() -> None:
        found = schedule.claim(f"t{len(served)}")
        waiting = {user for user, ids in queued.items() if ids}
        if found is None:
            assert not waiting
            return
        user = owner[found.command_id]
        assert queued[user].pop(0) == found.command_id  # each user's own order kept
        served.append(user)
        in_line_since[user] = len(served)
        for other in waiting - {user}:
            # Between two claims of a user in line, each other user has at most one claim in line
            # and at most one as a newcomer; so nobody waits more than twice round the others.
            gap = served[in_line_since.setdefault(other, len(served) - 1):]
            assert all(gap.count(v) <= 2 for v in set(gap)), (other, gap)

    for step in [*steps, *["claim"] * 200]:
        if step == "claim":
            claim()
            continue
        user, count = step
        batch = commands(user, count)
        if not queued.get(user):
            in_line_since[user] = len(served)
        schedule.enqueue(batch)
        for command in batch:
            owner[command.id] = user
        queued.setdefault(user, []).extend(c.id for c in batch)
    assert not any(queued.values())


def test_the_rules_hold_at_the_lowest_accepted_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 0.001 calls/s claims are 1,000 s apart: the mark and the memory of a user's last claim
    must outlive that, or every newcomer would go ahead (and the last one first)."""
    now = [1_000_000.0]
    monkeypatch.setattr(fakeredis_socket, "time", SimpleNamespace(time=lambda: now[0]))  # fakeredis's expiry clock
    gap = 1 / MIN_FLEET_RATE_PER_SECOND
    schedule, _ = make_queue()
    backlog = commands(A, 10)
    schedule.enqueue(backlog)

    def claim() -> str:
        now[0] += gap
        return schedule.claim(f"t{now[0]}").command_id

    taken = [claim(), claim()]
    first, second = commands(B, 1), commands(C, 1)
    schedule.enqueue(first)
    now[0] += gap
    schedule.enqueue(second)  # B went ahead and has not been served: C joins at the tail
    taken.append(claim())
    again = commands(B, 1)
    now[0] += gap
    schedule.enqueue(again)  # B was served just now: it joins at the tail, behind A and C
    taken += [claim(), claim(), claim()]
    assert taken == [backlog[0].id, backlog[1].id, first[0].id, backlog[2].id, second[0].id, again[0].id]
