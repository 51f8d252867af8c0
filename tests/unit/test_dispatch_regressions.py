"""One test per reproduction of the dispatch-correctness issue, each failing on the code before it.

Fakeredis with Lua and an injected clock; the real-process reproductions (a frozen worker, the
idle cost of a waiting fleet) are in `tests/e2e/test_dispatch_faults.py`. Items 2, 7 and 9 (the
fleet gate) are in `tests/fleet/test_fleet_gate.py`; the model that hunts for the interleavings
nobody wrote down is `tests/unit/test_dispatch_model.py`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import fakeredis
import pytest
from support import FakeClock  # tests/support.py

from ukcancel import keys, plans, submission
from ukcancel.assemble import build_runtime
from ukcancel.batch import EXPANDING, Batch
from ukcancel.command import COMPLETED, QUEUED, RETRYING, CancelCommand, CommandState
from ukcancel.dispatch import DispatchError
from ukcancel.jobs import JobSelection
from ukcancel.outcome import CancelReply, ProductOutcome
from ukcancel.reconciler import Reconciler
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.worker.cancellation import CancellationRun

USER = "astro@example.org"


class Broker:
    """The Dispatch port: counts what it was asked to send; refuses everything while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.turns = 0
        self.expansions: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise DispatchError("broker down")

    def send_turns(self, count: int) -> None:
        self._check()
        self.turns += count

    def queued_turns(self) -> int:
        self._check()
        return self.turns

    def expand_all_active(self, batch_id: str) -> None:
        self._check()
        self.expansions.append(batch_id)

    def refresh_jobs(self, user_id: str) -> None:
        self._check()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def runtime(clock: FakeClock, broker: Broker) -> Runtime:
    settings = Settings(fleet_rate_per_second=5.0, fleet_max_wait_seconds=2.0, lease_seconds=10.0,
                        breaker_cooldown_seconds=60.0)
    return build_runtime(settings, fakeredis.FakeRedis(server=fakeredis.FakeServer()), broker, clock=clock,
                         sleep=clock.sleep)


def reconciler(runtime: Runtime, broker: Broker, clock: FakeClock) -> Reconciler:
    return Reconciler(runtime.connection, runtime.schedule, runtime.batches, broker, "r1", gate=runtime.gate,
                      max_wait=runtime.settings.fleet_max_wait_seconds, period_seconds=0.5, clock=clock)


def enqueue(runtime: Runtime, count: int = 1, **fields: Any) -> list[CancelCommand]:
    commands = [CancelCommand(job_id=1001 + n, user_id=USER, products=["LightCurve"], **fields) for n in range(count)]
    submission.enqueue(runtime, commands)
    return commands


# 1 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["paused", "slow rate", "breaker open"])
def test_1_a_fleet_that_must_wait_does_not_spin(runtime: Runtime, broker: Broker, clock: FakeClock, how: str) -> None:
    """`acquire` answered Wait at once and the lane sent its successor at once: thousands of turns."""
    if how == "paused":
        runtime.gate.pause(300)
    elif how == "slow rate":
        runtime.gate.configure(rate_per_second=0.2)
        permit = runtime.gate.acquire(max_wait=0)
        runtime.gate.release(permit, "ok")  # type: ignore[arg-type]
        clock.now += 0.1  # the next permit is 2.4 s off (half an interval early)
    else:
        runtime.connection.hset(keys.FLEET_BREAKER, mapping={"state": "open", "opened_at": clock.now, "failures": 5})
    enqueue(runtime, 10)
    sent = broker.turns  # what enqueue sent: at most the lanes
    assert sent <= runtime.settings.dispatch_lanes
    ukssdc = StubUkssdc()
    turns_run = 0
    for _ in range(40):  # 20 s of simulated time, a reconciler tick every 0.5 s
        while broker.turns:
            broker.turns -= 1
            turns_run += 1
            result = CancellationRun(runtime, f"t{turns_run}", runtime.gate, ukssdc).run()  # type: ignore[arg-type]
            if result.command_id is not None:
                runtime.schedule.continue_lane()
        reconciler(runtime, broker, clock).tick()
        clock.now += 0.5
    if how == "slow rate":  # a permit every 5 s, and about one turn each time it is near
        assert 3 <= ukssdc.calls <= 5
        assert turns_run <= sent + 3 * ukssdc.calls
    else:
        assert ukssdc.calls == 0 and turns_run == sent  # the reconciler held the lanes the whole time


class StubUkssdc:
    """Answers every cancel with "cancelled", counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def cancel_job(self, user_id: str, job_id: int, shorts: list[str]) -> CancelReply:
        self.calls += 1
        return CancelReply(1, None, {short: ProductOutcome(0, "Job cancelled OK") for short in shorts})


# 3 --------------------------------------------------------------------------------------------
def test_3_a_takeover_then_two_transient_failures_never_strand_the_command(runtime: Runtime, clock: FakeClock) -> None:
    [command] = enqueue(runtime)
    queue = runtime.schedule
    assert queue.claim("frozen").command_id == command.id  # type: ignore[union-attr]
    assert queue.start(command.id, "frozen").moved
    clock.now += runtime.settings.lease_seconds + 1  # frozen past its lease
    takeover = queue.claim("heir")
    assert takeover is not None and takeover.takeover
    assert queue.start(command.id, "heir").moved
    late = queue.retry_later(command.id, "frozen", clock.now + 1, "read timeout")  # the frozen call times out
    assert not late.held and runtime.registry.state_of(command.id) == CommandState.RUNNING  # refused, changed nothing
    heir = queue.retry_later(command.id, "heir", clock.now + 1, "read timeout")
    assert heir.held and heir.moved and runtime.registry.state_of(command.id) == RETRYING
    assert queue.due_at(command.id) == clock.now + 1  # on the due list: a turn will find it
    clock.now += 1
    assert queue.claim("next").command_id == command.id  # type: ignore[union-attr]


# 4 --------------------------------------------------------------------------------------------
def test_4_the_terminal_step_writes_the_results_entry_and_the_callback_outbox_itself(
    runtime: Runtime, clock: FakeClock
) -> None:
    """The results entry and the callback were Python hooks after the transition: a worker killed
    between them lost both. Now nothing runs after the script: the one step carries them."""
    [command] = enqueue(runtime, callback_url="https://receiver.example.org/hook")
    runtime.schedule.claim("turn")
    runtime.schedule.start(command.id, "turn")
    done = runtime.schedule.finish(command.id, "turn", [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}])
    assert done.moved
    [(_, entry)] = runtime.connection.xrange(keys.RESULTS_STREAM)
    assert entry[b"command_id"].decode() == command.id and entry[b"state"] == b"completed"
    assert json.loads(entry[b"result"]) == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]
    assert runtime.connection.zscore(keys.CALLBACK_OUTBOX, command.id) == pytest.approx(clock.now)
    assert runtime.registry.get(command.id).callback["status"] == "pending"  # type: ignore[union-attr]
    again = runtime.registry.complete(command.id, [-1, {"ERROR": "a second run"}])
    assert not again.moved and runtime.connection.xlen(keys.RESULTS_STREAM) == 1


# 5 --------------------------------------------------------------------------------------------
def test_5_a_broker_that_is_down_loses_nothing_and_frees_no_idempotency_key(runtime: Runtime, broker: Broker) -> None:
    """The API answered 503 "nothing was enqueued" for a command a lane had already started, and
    freed its Idempotency-Key, so the recommended retry made a second cancel."""
    from ukcancel.token import Principal

    broker.down = True
    caller = Principal(token_name="t", user_id=USER, admin=False, callback_secret="s")
    reservation = submission.Reservation("ukcancel:idem:t:key-1", "digest")
    first = submission.submit(runtime, caller, {"job_id": 1001, "products": ["LightCurve"]}, reservation)
    assert first.created and runtime.registry.state_of(first.command.id) == QUEUED
    again = submission.submit(runtime, caller, {"job_id": 1001, "products": ["LightCurve"]}, reservation)
    assert not again.created and again.command.id == first.command.id  # the key still names it
    broker.down = False
    report = reconciler(runtime, broker, runtime.schedule.clock).tick()  # type: ignore[arg-type]
    assert report.sent == 1 and broker.turns == 1  # its turn follows once the broker is back


# 6 --------------------------------------------------------------------------------------------
def test_6_an_all_active_batch_is_not_failed_by_a_broker_error(runtime: Runtime, broker: Broker, clock: FakeClock) -> None:
    broker.down = True
    batch = submission.start_expansion(runtime, Batch(USER, state=EXPANDING))
    assert runtime.batches.get(batch.id).state == EXPANDING  # type: ignore[union-attr]
    assert batch.id in runtime.batches.overdue_expansions()  # the reconciler sends it at its next tick
    broker.down = False
    assert reconciler(runtime, broker, clock).tick().expansions == 1 and broker.expansions == [batch.id]


# 8 --------------------------------------------------------------------------------------------
def test_8_a_run_that_sent_no_request_counts_no_attempt(runtime: Runtime, clock: FakeClock) -> None:
    """Starting counted an attempt: a run that died (or was deferred) before its request used one."""
    [command] = enqueue(runtime)
    runtime.schedule.claim("dies-before-calling")
    runtime.schedule.start(command.id, "dies-before-calling")
    clock.now += runtime.settings.lease_seconds + 1
    runtime.schedule.claim("heir")
    runtime.schedule.start(command.id, "heir")
    assert runtime.registry.get(command.id).attempts == 0  # type: ignore[union-attr]
    runtime.registry.record_progress(command.id, holder="dies-before-calling", count_attempt=True)
    assert runtime.registry.get(command.id).attempts == 0  # type: ignore[union-attr]  # not the holder
    runtime.registry.record_progress(command.id, holder="heir", count_attempt=True)  # the heir's request
    assert runtime.registry.get(command.id).attempts == 1  # type: ignore[union-attr]


# 10 -------------------------------------------------------------------------------------------
def ready_plan(runtime: Runtime) -> plans.Plan:
    plan = plans.Plan(USER, JobSelection(), "t")
    runtime.plans.add(plan)
    runtime.connection.hset(keys.plan(plan.id), mapping={
        "state": plans.READY, "pairs": json.dumps([{"job_id": 1001, "name": "x", "products": ["LightCurve"]}]),
        "expires_at": runtime.plans.clock() + 300,
    })
    return runtime.plans.get(plan.id)  # type: ignore[return-value]


def test_10_applying_an_expired_plan_leaves_no_stub_without_expiry(runtime: Runtime) -> None:
    plan = ready_plan(runtime)
    runtime.connection.delete(keys.plan(plan.id))  # it expired between the read and the apply
    with pytest.raises(plans.PlanExpired):
        plans.apply(runtime, plan, "t")
    assert not runtime.connection.exists(keys.plan(plan.id))


def test_10_concurrent_applies_answer_with_one_batch_that_exists(runtime: Runtime) -> None:
    plan = ready_plan(runtime)
    answers: list[tuple[str, bool]] = []
    threads = [threading.Thread(target=lambda: answers.append(plans.apply(runtime, plan, "t"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({batch_id for batch_id, _ in answers}) == 1
    assert [created for _, created in answers].count(True) == 1
    assert runtime.batches.get(answers[0][0]) is not None  # the batch every apply named exists
    assert runtime.connection.hget(keys.plan(plan.id), "batch_id").decode() == answers[0][0]  # type: ignore[union-attr]


def test_10_a_record_with_an_old_json_history_is_read_and_moves_on(runtime: Runtime, clock: FakeClock) -> None:
    [command] = enqueue(runtime)
    old = [{"state": QUEUED, "at": clock.now}, {"state": CommandState.RUNNING, "at": clock.now + 1.5}]
    runtime.connection.hset(keys.command(command.id), mapping={"history": json.dumps(old), "id": command.id})
    assert runtime.registry.get(command.id).history == old  # type: ignore[union-attr]
    clock.now += 3
    assert runtime.registry.complete(command.id, [1, {}]).moved
    done = runtime.registry.get(command.id)
    assert done is not None and done.state == COMPLETED
    assert [entry["state"] for entry in done.history] == [QUEUED, CommandState.RUNNING, COMPLETED]
    assert done.history[-1]["at"] == pytest.approx(clock.now)

