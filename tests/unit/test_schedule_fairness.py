"""Fair dispatch between UKSSDC users (`ukcancel.schedule.Schedule`), on fakeredis."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukcancel import keys
from ukcancel.command import QUEUED, CancelCommand, CommandRegistry
from ukcancel.schedule import Schedule

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
