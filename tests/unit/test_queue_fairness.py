"""Fair dispatch between UKSSDC users (`ukcancel.queue.CancelQueue`), on fakeredis."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukcancel import keys
from ukcancel.command import QUEUED, CancelCommand, CommandRegistry
from ukcancel.queue import CancelQueue

A, B, C = "a@example.org", "b@example.org", "c@example.org"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, count: int) -> None:
        self.calls.append(count)


def make_queue() -> tuple[CancelQueue, Recorder]:
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    recorder = Recorder()
    return CancelQueue(connection, CommandRegistry(connection, 3600), recorder), recorder


@pytest.fixture
def queue() -> CancelQueue:
    return make_queue()[0]


def commands(user: str, count: int) -> list[CancelCommand]:
    return [CancelCommand(job_id=1000 + n, user_id=user, products="all") for n in range(count)]


def drain(queue: CancelQueue, prefix: str = "t") -> list[str]:
    taken = []
    for n in range(1000):
        claim = queue.claim(f"{prefix}{n}")
        if claim is None:
            return taken
        taken.append(claim.command_id)
    raise AssertionError("the queue never ran dry")


def test_enqueue_stores_records_and_sends_a_turn_per_command_up_to_the_lanes() -> None:
    queue, recorder = make_queue()
    batch = commands(A, 3) + commands(B, 2)
    queue.enqueue(batch)
    queue.enqueue(commands(C, 50))
    # 5 turns are on their way (none has started): the second enqueue tops them up to the lanes.
    assert recorder.calls == [5, queue.lanes - 5]
    for command in batch:
        stored = queue.registry.get(command.id)
        assert stored is not None and stored.state == QUEUED
    assert queue.depth() == {A: 3, B: 2, C: 50}


def test_a_big_batch_of_one_user_does_not_starve_another_user(queue: CancelQueue) -> None:
    many = commands(A, 5)
    queue.enqueue(many)
    single = commands(B, 1)
    queue.enqueue(single)
    order = drain(queue)
    # A's first command had the head of the line; B's single command comes right after it.
    assert order == [many[0].id, single[0].id, *[c.id for c in many[1:]]]


def test_round_robin_between_three_users_keeps_each_users_order(queue: CancelQueue) -> None:
    a, b, c = commands(A, 3), commands(B, 2), commands(C, 1)
    queue.enqueue(a + b + c)
    assert drain(queue) == [a[0].id, b[0].id, c[0].id, a[1].id, b[1].id, a[2].id]
    assert queue.depth() == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(1, 4)), min_size=1, max_size=6))
def test_every_command_is_handed_out_exactly_once_and_fairly(plan: list[tuple[str, int]]) -> None:
    queue, recorder = make_queue()
    by_user: dict[str, list[str]] = {}
    for user, count in plan:
        batch = commands(user, count)
        queue.enqueue(batch)
        by_user.setdefault(user, []).extend(c.id for c in batch)
    order = drain(queue)
    assert sorted(order) == sorted(i for ids in by_user.values() for i in ids)
    # Turns on their way cover later commands: as many turns as lanes, never one per command.
    assert sum(recorder.calls) == min(len(order), queue.lanes)
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


def test_remove_waiting_takes_a_command_out_of_line(queue: CancelQueue) -> None:
    a = commands(A, 3)
    b = commands(B, 1)
    queue.enqueue(a + b)
    queue.remove_waiting(a[1])
    assert queue.depth() == {A: 2, B: 1}
    assert drain(queue) == [a[0].id, b[0].id, a[2].id]


def test_a_user_whose_line_emptied_while_on_the_ring_is_skipped_then_served_again(queue: CancelQueue) -> None:
    only = commands(A, 1)
    queue.enqueue(only)
    queue.remove_waiting(only[0])
    assert queue.claim("t1") is None
    later = commands(A, 2)
    queue.enqueue(later)
    assert drain(queue, "u") == [c.id for c in later]


def test_claim_on_an_empty_queue_takes_nothing(queue: CancelQueue) -> None:
    assert queue.claim("t") is None
    assert queue.connection.zcard(keys.LEASES) == 0
    assert queue.depth() == {}


def test_staging_into_a_given_pipeline_leaves_its_execution_to_the_caller(queue: CancelQueue) -> None:
    """rq's convention: a method given a pipeline never executes it."""
    pipe = queue.connection.pipeline(transaction=True)
    batch = commands(A, 2)
    sent: list[int] = []
    queue.dispatch = sent.append
    staged = queue.stage(batch, pipe)
    assert queue.registry.get(batch[0].id) is None and sent == []  # nothing written, no turn yet
    staged.send_turns(pipe.execute())
    assert queue.registry.get(batch[0].id) is not None and sent == [2]
    assert drain(queue) == [c.id for c in batch]


def test_a_user_whose_line_was_emptied_by_a_withdrawal_is_on_the_ring_once() -> None:
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    registry = CommandRegistry(connection, ttl_seconds=3600)
    line = CancelQueue(connection, registry, dispatch=lambda n: None)
    first = CancelCommand(job_id=1, user_id="a@example.org", products=["LightCurve"])
    line.enqueue([first])
    line.remove_waiting(first)  # the list is empty, the user still on the ring
    line.enqueue([CancelCommand(job_id=2, user_id="a@example.org", products=["LightCurve"])])
    assert connection.lrange(keys.FAIR_USERS, 0, -1) == [b"a@example.org"]
