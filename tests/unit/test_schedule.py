"""The schedule (`ukcancel.schedule.Schedule`) and the reconciler, on fakeredis with an injected clock."""

from __future__ import annotations

import fakeredis
import pytest
from support import FakeClock  # tests/support.py

from ukcancel import keys
from ukcancel.batch import EXPANDING, Batch, BatchRegistry
from ukcancel.command import CancelCommand, CommandRegistry
from ukcancel.fleet import FleetGate
from ukcancel.reconciler import Reconciler, missing_turns
from ukcancel.schedule import DUE, TAKEOVER, WAITING, Claim, Schedule, ScheduleCounts
from ukcancel.settings import Settings

A, B = "a@example.org", "b@example.org"
LEASE = 10.0


class Broker:
    """The turns a reconciler sends, and how many the broker says are waiting."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.queued = 0
        self.expansions: list[str] = []

    def expand_all_active(self, batch_id: str) -> None:
        self.expansions.append(batch_id)

    def send_turns(self, count: int) -> None:
        self.sent.append(count)
        self.queued += count

    def queued_turns(self) -> int:
        return self.queued


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def schedule(clock: FakeClock) -> Schedule:
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    registry = CommandRegistry(connection, 3600, clock=clock)
    return Schedule(connection, registry, lambda n: None, lanes=4, lease_seconds=LEASE, clock=clock)


def batches(schedule: Schedule) -> BatchRegistry:
    return BatchRegistry(schedule.connection, 3600, clock=schedule.clock, expansion_timeout=60.0)


def gate(schedule: Schedule) -> FleetGate:
    """A gate with plenty of room (the reconciler asks it whether a permit is near)."""
    return FleetGate(schedule.connection, Settings(fleet_rate_per_second=1000), clock=schedule.clock)


def retry(schedule: Schedule, command_id: str, holder: str, at: float) -> bool:
    """What a run does with a claimed command that must go again later: start, then retry later."""
    schedule.start(command_id, holder)
    return schedule.retry_later(command_id, holder, at, "HTTP 503").moved


def enqueue(schedule: Schedule, user: str, count: int) -> list[str]:
    commands = [CancelCommand(job_id=1000 + n, user_id=user, products=["LightCurve"]) for n in range(count)]
    schedule.enqueue(commands)
    return [c.id for c in commands]


def test_a_claim_leases_the_command_to_its_holder(schedule: Schedule, clock: FakeClock) -> None:
    [command] = enqueue(schedule, A, 1)
    claim = schedule.claim("turn-1")
    assert claim is not None and (claim.command_id, claim.found) == (command, WAITING)
    assert schedule.connection.zscore(keys.LEASES, command) == clock.now + LEASE
    assert schedule.claim("turn-2") is None  # leased: no second turn takes it
    assert schedule.counts() == ScheduleCounts(0, 0, 0, 1, 0, LEASE)


def test_only_the_holder_renews_or_releases_a_lease(schedule: Schedule, clock: FakeClock) -> None:
    [command] = enqueue(schedule, A, 1)
    schedule.claim("turn-1")
    clock.now += 5
    assert not schedule.renew(command, "turn-2") and not schedule.release(command, "turn-2")
    assert schedule.renew(command, "turn-1")
    assert schedule.connection.zscore(keys.LEASES, command) == clock.now + LEASE
    clock.now += 9  # 14 s after the claim, but 9 s after the renewal: still live
    assert schedule.claim("turn-3") is None
    assert schedule.release(command, "turn-1")
    assert schedule.counts() == ScheduleCounts(0, 0, 0, 0, 0, None)


def test_an_expired_lease_is_taken_over_first(schedule: Schedule, clock: FakeClock) -> None:
    first, second = enqueue(schedule, A, 2)
    schedule.claim("dead-turn")
    clock.now += LEASE + 0.001
    assert schedule.counts().expired_leases == 1 and schedule.counts().runnable == 2
    claim = schedule.claim("heir")
    assert claim is not None and (claim.command_id, claim.found) == (first, TAKEOVER) and claim.takeover
    assert schedule.connection.hget(keys.LEASE_HOLDERS, first) == b"heir"
    assert not schedule.renew(first, "dead-turn")  # the dead run cannot take it back
    assert schedule.claim("next").command_id == second  # type: ignore[union-attr]


def test_due_commands_wait_for_their_time_then_go_before_waiting_ones(schedule: Schedule, clock: FakeClock) -> None:
    retried, = enqueue(schedule, A, 1)
    schedule.claim("turn-1")
    assert retry(schedule, retried, "turn-1", clock.now + 2.0)
    waiting = enqueue(schedule, B, 5_000)
    assert schedule.due_at(retried) == clock.now + 2.0
    assert schedule.counts() == ScheduleCounts(5_000, 0, 0, 0, 1, 2.0)
    assert schedule.claim("turn-2").command_id == waiting[0]  # type: ignore[union-attr]  # not due yet
    clock.now += 2.0
    claim = schedule.claim("turn-3")
    assert claim is not None and (claim.command_id, claim.found) == (retried, DUE)  # ahead of B's 4,999
    assert schedule.due_at(retried) is None


def test_a_reschedule_by_a_run_that_lost_its_lease_is_refused(schedule: Schedule, clock: FakeClock) -> None:
    [command] = enqueue(schedule, A, 1)
    schedule.claim("slow-turn")
    clock.now += LEASE + 1
    schedule.claim("heir")
    refused = schedule.retry_later(command, "slow-turn", clock.now + 5, "late")
    assert not refused.held and not refused.moved
    assert schedule.due_at(command) is None and schedule.counts().live_leases == 1


def test_continue_lane_sends_a_successor_only_while_work_is_runnable_and_lanes_are_free(
    schedule: Schedule, clock: FakeClock
) -> None:
    sent: list[int] = []
    schedule.dispatch = sent.append
    assert not schedule.continue_lane()  # nothing runnable
    ids = enqueue(schedule, A, 10)
    for n in range(4):
        schedule.claim(f"turn-{n}")
    assert not schedule.continue_lane()  # every lane is running
    schedule.release(ids[0], "turn-0")
    assert schedule.continue_lane() and sent[-1] == 1


# -- the reconciler --------------------------------------------------------------------------------
def test_missing_turns_fills_up_to_the_lanes() -> None:
    def counts(waiting: int = 0, due: int = 0, expired: int = 0, live: int = 0) -> ScheduleCounts:
        return ScheduleCounts(waiting, due, expired, live, 0, None)

    assert missing_turns(counts(), queued=0, lanes=6) == 0
    assert missing_turns(counts(waiting=1), queued=0, lanes=6) == 1  # a lost turn
    assert missing_turns(counts(waiting=1), queued=1, lanes=6) == 0  # its turn is on its way
    assert missing_turns(counts(waiting=5_000), queued=0, lanes=6) == 6
    assert missing_turns(counts(waiting=5_000, live=6), queued=0, lanes=6) == 0  # running turns continue
    assert missing_turns(counts(waiting=5_000, live=4), queued=1, lanes=6) == 1
    assert missing_turns(counts(due=1, live=6), queued=0, lanes=6) == 0
    assert missing_turns(counts(expired=2), queued=0, lanes=6) == 2  # killed workers' commands


def test_a_tick_sends_the_missing_turns_and_duplicates_change_nothing(schedule: Schedule, clock: FakeClock) -> None:
    broker = Broker()
    reconciler = Reconciler(schedule.connection, schedule, batches(schedule), broker, "w1", gate=gate(schedule), max_wait=2.0, period_seconds=0.5)
    enqueue(schedule, A, 3)  # their turns were lost (the schedule's dispatch here sends none)
    report = reconciler.tick()
    assert report.held and report.sent == 3 and broker.sent == [3]
    assert reconciler.tick().sent == 0  # they are queued now
    broker.queued = 10  # extra duplicate turns in the broker
    assert reconciler.tick().sent == 0


def test_one_reconciler_acts_at_a_time_and_another_takes_over_when_it_stops(schedule: Schedule) -> None:
    first, second = Broker(), Broker()
    one = Reconciler(schedule.connection, schedule, batches(schedule), first, "w1", gate=gate(schedule), max_wait=2.0, period_seconds=0.5)
    two = Reconciler(schedule.connection, schedule, batches(schedule), second, "w2", gate=gate(schedule), max_wait=2.0, period_seconds=0.5)
    enqueue(schedule, A, 1)
    assert one.tick().held and not two.tick().held
    assert second.sent == []
    one.step_down()
    assert two.tick().held and second.sent == [1]


def test_a_killed_workers_command_gets_a_turn_once_its_lease_lapses(schedule: Schedule, clock: FakeClock) -> None:
    broker = Broker()
    reconciler = Reconciler(schedule.connection, schedule, batches(schedule), broker, "w1", gate=gate(schedule), max_wait=2.0, period_seconds=0.5)
    enqueue(schedule, A, 1)
    schedule.claim("killed-turn")
    assert reconciler.tick().sent == 0  # live lease: its worker may still be calling
    clock.now += LEASE + 0.001
    assert reconciler.tick().sent == 1


def test_an_expansion_not_heard_from_in_time_is_sent_again_once_per_timeout(schedule: Schedule, clock: FakeClock) -> None:
    registry = batches(schedule)
    broker = Broker()
    reconciler = Reconciler(schedule.connection, schedule, registry, broker, "w1", gate=gate(schedule), max_wait=2.0, period_seconds=0.5)
    lost, alive = Batch(A, state=EXPANDING), Batch(B, state=EXPANDING)
    pipe = schedule.connection.pipeline(transaction=True)
    registry.add(lost, [], pipe)
    registry.add(alive, [], pipe)
    pipe.execute()  # their expansion tasks were sent (and one of them lost)
    clock.now += 50
    registry.save_expansion_progress(alive.id, attempts=0)  # this one is working: its deadline moves on
    assert reconciler.tick().expansions == 0
    clock.now += 10.001
    assert reconciler.tick().expansions == 1 and broker.expansions == [lost.id]
    assert reconciler.tick().expansions == 0  # once per timeout, not once per tick
    clock.now += 60.001
    assert reconciler.tick().expansions == 2  # the resent one was not heard from either; the other's time ran out
    registry.fail(lost.id, "x")
    pipe = schedule.connection.pipeline(transaction=True)
    registry.finish_expansion(alive.id, [], pipe)
    pipe.execute()
    clock.now += 120
    assert reconciler.tick().expansions == 0  # ended batches are off the list


def test_enqueue_sends_turns_only_for_lanes_neither_running_nor_covered_by_turns_on_their_way(
    schedule: Schedule, clock: FakeClock
) -> None:
    sent: list[int] = []
    schedule.dispatch = sent.append
    enqueue(schedule, A, 10)
    assert sent == [4]  # every lane free
    enqueue(schedule, B, 5)
    assert sent == [4]  # the 4 turns on their way will claim these too
    def arrive_and_claim(name: str) -> Claim | None:
        assert schedule.start_turn()  # the turn arrives (off the ones on their way) and finds work
        return schedule.claim(name)

    claims = [arrive_and_claim(f"turn-{n}") for n in range(3)]  # three started: 1 on its way, 3 running
    enqueue(schedule, B, 5)
    assert sent == [4]
    claims.append(arrive_and_claim("turn-3"))  # the last one started: 4 running, none on its way
    for n, claim in enumerate(claims):
        assert claim is not None and schedule.release(claim.command_id, f"turn-{n}")
    enqueue(schedule, B, 1)  # nothing running, nothing on its way
    assert sent == [4, 1]
    schedule.set_turns_on_their_way(0)  # the reconciler: the broker holds none (that turn was lost)
    clock.now += LEASE + 1
    enqueue(schedule, B, 1)
    assert sent == [4, 1, 1]


def test_runnable_now_sees_waiting_due_and_expired_work_only(schedule: Schedule, clock: FakeClock) -> None:
    assert not schedule.runnable_now()
    [command] = enqueue(schedule, A, 1)
    assert schedule.runnable_now()
    schedule.claim("turn-1")
    assert not schedule.runnable_now()  # leased and live
    retry(schedule, command, "turn-1", clock.now + 5)
    assert not schedule.runnable_now()  # due later
    clock.now += 5
    assert schedule.runnable_now()  # due now
    schedule.claim("turn-2")
    clock.now += LEASE + 1
    assert schedule.runnable_now()  # its lease lapsed
