"""The fleet gate on its own: breaker, sliding window, pause, unused permits (fakeredis, a fake clock)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import FakeClock  # tests/support.py

from ukcancel import keys, metrics
from ukcancel.fleet import CLOSED, FAILED, HALF_OPEN, OK, OPEN, SENT, FleetGate, Permit, Wait, rate_window
from ukcancel.retry import CallFailure
from ukcancel.settings import MIN_FLEET_RATE_PER_SECOND, Settings


def make_gate(clock: FakeClock, **settings: object) -> FleetGate:
    values = {"fleet_rate_per_second": 1000.0, "fleet_max_in_flight": 100, "breaker_failure_threshold": 3,
              "breaker_cooldown_seconds": 30.0, "fleet_guard_seconds": 0.1, **settings}
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return FleetGate(connection, Settings(**values), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def permit(gate: FleetGate) -> Permit:
    """A permit; the fake clock runs through the pacing interval between permits if needed."""
    outcome = gate.acquire(max_wait=1.0)
    assert isinstance(outcome, Permit), outcome
    return outcome


def test_breaker_opens_after_threshold_consecutive_failures_and_refuses_permits() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    for _ in range(2):
        gate.release(permit(gate), FAILED)
    assert gate.breaker_state()["state"] == CLOSED
    gate.release(permit(gate), FAILED)

    assert gate.breaker_state()["state"] == OPEN
    refused = gate.acquire(max_wait=0)
    assert isinstance(refused, Wait)
    assert refused.reason == "circuit breaker open"
    assert refused.seconds == pytest.approx(30.0)


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    for _ in range(2):
        gate.release(permit(gate), FAILED)
    gate.release(permit(gate), OK)
    for _ in range(2):
        gate.release(permit(gate), FAILED)
    assert gate.breaker_state()["state"] == CLOSED


def open_breaker(gate: FleetGate) -> None:
    for _ in range(3):
        gate.release(permit(gate), FAILED)
    assert gate.breaker_state()["state"] == OPEN


def test_after_the_cool_down_exactly_one_probe_and_its_success_closes() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    open_breaker(gate)
    clock.now += 29.9
    assert isinstance(gate.acquire(max_wait=0), Wait)
    clock.now += 0.2

    assert gate.breaker_state()["state"] == HALF_OPEN
    probe = permit(gate)
    assert probe.probe
    for _ in range(5):  # everyone else waits while the probe is out
        outcome = gate.acquire(max_wait=0)
        assert isinstance(outcome, Wait) and "probe in flight" in outcome.reason

    gate.release(probe, OK)
    assert gate.breaker_state()["state"] == CLOSED
    assert [permit(gate).probe for _ in range(3)] == [False, False, False]


def test_a_failed_probe_opens_the_breaker_again_for_a_full_cool_down() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    open_breaker(gate)
    clock.now += 31
    probe = permit(gate)
    assert probe.probe
    gate.release(probe, FAILED)

    assert gate.breaker_state()["state"] == OPEN
    refused = gate.acquire(max_wait=0)
    assert isinstance(refused, Wait) and refused.seconds == pytest.approx(30.0)
    clock.now += 30.5
    assert permit(gate).probe


def test_an_unused_probe_lets_the_next_caller_probe_and_tells_the_breaker_nothing() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    open_breaker(gate)
    clock.now += 31
    gate.release_unused(permit(gate))  # e.g. the turn found no waiting command
    assert gate.breaker_state()["state"] == HALF_OPEN
    assert permit(gate).probe


def test_an_unused_permit_does_not_reset_consecutive_failures() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    for _ in range(2):
        gate.release(permit(gate), FAILED)
    gate.release_unused(permit(gate))
    gate.release(permit(gate), FAILED)
    assert gate.breaker_state()["state"] == OPEN


def test_sliding_window_never_grants_more_than_the_rate_in_any_window() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=10.0, fleet_guard_seconds=0.1)
    granted: list[float] = []
    while clock.now < 1_000_010.0:
        outcome = gate.acquire(max_wait=0)
        if isinstance(outcome, Permit):
            granted.append(clock.now)
            gate.release(outcome, OK)
            clock.now += 0.013  # callers keep asking
        else:
            clock.now += outcome.seconds

    # Any 11 consecutive permits span at least the window plus the guard.
    assert all(granted[i + 10] - granted[i] >= 1.1 - 1e-9 for i in range(len(granted) - 10))
    # ... and the gate is not needlessly slow: 10 per 1.1 s.
    assert len(granted) >= 10 * (10 / 1.1) - 1


def test_an_unused_permit_gives_its_place_in_the_window_back() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=2.0)
    gate.release_unused(permit(gate))
    permit(gate)
    permit(gate)
    assert isinstance(gate.acquire(max_wait=0), Wait)


def test_in_flight_cap() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_max_in_flight=2)
    first, _ = permit(gate), permit(gate)
    outcome = gate.acquire(max_wait=0)
    assert isinstance(outcome, Wait) and "in flight" in outcome.reason
    gate.release(first, OK)
    permit(gate)


def test_pause_holds_every_permit_until_it_ends_and_is_never_shortened() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    gate.pause(2.0)
    gate.pause(0.5)
    outcome = gate.acquire(max_wait=0)
    assert isinstance(outcome, Wait) and outcome.seconds == pytest.approx(2.0)
    assert gate.paused_for() == pytest.approx(2.0)
    clock.now += 2.01
    permit(gate)
    assert gate.connection.ttl("ukcancel:fleet:paused_until") <= 4


def test_acquire_waits_within_max_wait() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=1.0, fleet_guard_seconds=0.1)
    permit(gate)
    started = clock.now
    assert isinstance(gate.acquire(max_wait=0.5), Wait)
    assert isinstance(gate.acquire(max_wait=2.0), Permit)
    assert clock.now - started == pytest.approx(1.1)


def test_one_acquire_is_one_observation_and_covers_only_its_wait() -> None:
    """A turn asks once: a wait then a grant is one "granted" (not also a "deferred"), and its
    `while_waiting` context is entered only around the sleep."""
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=1.0, fleet_guard_seconds=0.1)
    waits: list[str] = []

    @contextlib.contextmanager
    def covering() -> Iterator[None]:
        waits.append("entered")
        yield
        waits.append("left")

    counts = {o: _count(o) for o in ("granted", "deferred")}
    assert isinstance(gate.acquire(max_wait=0, while_waiting=covering), Permit) and waits == []
    assert isinstance(gate.acquire(max_wait=2.0, while_waiting=covering), Permit)
    assert waits == ["entered", "left"]
    assert isinstance(gate.acquire(max_wait=0.5, while_waiting=covering), Wait) and waits == ["entered", "left"]
    assert _count("granted") - counts["granted"] == 2 and _count("deferred") - counts["deferred"] == 1


def _count(outcome: str) -> float:
    return next((s.value for s in metrics.PERMIT_WAIT_SECONDS.collect()[0].samples
                 if s.name.endswith("_count") and s.labels.get("outcome") == outcome), 0.0)


def test_run_time_configuration_is_read_at_every_acquire() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=1.0)
    permit(gate)
    assert isinstance(gate.acquire(max_wait=0), Wait)
    limits = gate.configure(rate_per_second=5, max_in_flight=7)
    assert (limits.rate_per_second, limits.max_in_flight) == (5.0, 7)
    permit(gate)
    with pytest.raises(ValueError):
        gate.configure(rate_per_second=0)


@pytest.mark.parametrize(
    ("rate", "window"),
    [(2.0, (2, 1.0)), (0.5, (1, 2.0)), (2.5, (2, 0.8)), (50, (50, 1.0)), (0.005, (1, 200.0)), (0.2, (1, 5.0))],
)
def test_rate_window(rate: float, window: tuple[int, float]) -> None:
    calls, seconds = rate_window(rate)
    assert (calls, seconds) == (window[0], pytest.approx(window[1]))


def test_a_slow_rate_is_kept_exactly_not_rounded_up_to_one_call_a_second() -> None:
    """0.005/s was made 1/s by rounding: 20 UKSSDC calls in 21 s. Now one call in any 200 s."""
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=0.005, fleet_guard_seconds=0.04)
    granted: list[float] = []
    while clock.now < 1_000_000.0 + 1000:
        outcome = gate.acquire(max_wait=0)
        if isinstance(outcome, Permit):
            granted.append(clock.now)
            gate.release(outcome, OK)
        clock.now += 0.5  # callers keep asking twice a second
    assert [b - a for a, b in zip(granted, granted[1:])] == [pytest.approx(200.04, abs=0.5)] * 4
    assert len(granted) == 5


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=MIN_FLEET_RATE_PER_SECOND, max_value=80.0, allow_nan=False),
    asks=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=20, max_size=120),
    guard=st.sampled_from([0.0, 0.04]),
)
def test_no_window_over_the_limit_at_any_accepted_rate(rate: float, asks: list[float], guard: float) -> None:
    """I4: at any accepted rate, k = max(1, floor(rate)) calls at most in any k / rate (+ guard) seconds."""
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=rate, fleet_guard_seconds=guard)
    calls, window = rate_window(rate)
    granted: list[float] = []
    for gap in asks:
        outcome = gate.acquire(max_wait=0)
        if isinstance(outcome, Permit):
            granted.append(clock.now)
            gate.release(outcome, OK)
            clock.now += gap * min(1.0, 1 / rate)
        else:  # wait a little, or exactly as long as told
            clock.now += outcome.seconds if gap > 1.5 else max(1e-3, gap * outcome.seconds)
    assert all(granted[i + calls] - granted[i] >= window + guard - 1e-6 for i in range(len(granted) - calls))


def test_rates_below_the_lowest_accepted_are_refused_with_a_clear_error() -> None:
    gate = make_gate(FakeClock(1_000_000.0))
    with pytest.raises(ValueError, match=f"at least {MIN_FLEET_RATE_PER_SECOND}"):
        gate.configure(rate_per_second=MIN_FLEET_RATE_PER_SECOND / 2)
    assert gate.configure(rate_per_second=MIN_FLEET_RATE_PER_SECOND).rate_per_second == MIN_FLEET_RATE_PER_SECOND


def test_a_late_release_of_another_permit_does_not_free_the_half_open_probe() -> None:
    """Any non-probe release used to delete the probe key, letting a second probe through."""
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    early = permit(gate)  # a call that started before the breaker opened
    open_breaker(gate)
    clock.now += 31
    probe = permit(gate)
    assert probe.probe
    gate.release(early, SENT)  # the early call ends (its outcome unknown) while the probe is out
    outcome = gate.acquire(max_wait=0)
    assert isinstance(outcome, Wait) and "probe in flight" in outcome.reason
    gate.release(probe, FAILED)
    assert gate.breaker_state()["state"] == OPEN


def test_a_call_ended_by_an_unexpected_error_still_counts_in_the_rate_window() -> None:
    """`permit()` used to give a sent call's place in the window back on any error but `CallFailure`."""
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=1.0, fleet_guard_seconds=0.0)
    with pytest.raises(ZeroDivisionError), gate.permit(max_wait=0):
        raise ZeroDivisionError  # the request may have gone out before the worker failed
    assert gate.connection.zcard(keys.FLEET_CALLS) == 1
    assert isinstance(gate.acquire(max_wait=0), Wait)  # its place is still taken
    assert gate.in_flight() == 0 and gate.breaker_state()["failures"] == 0


def test_a_retry_after_pauses_the_fleet_in_the_same_step_as_the_release() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock)
    with pytest.raises(CallFailure), gate.permit(max_wait=0):
        raise type("Busy", (CallFailure,), {"transient": True})("HTTP 503", retry_after=7.0, status_code=503)
    assert gate.paused_for() == pytest.approx(7.0)
    assert gate.breaker_state()["failures"] == 1 and gate.in_flight() == 0


def test_next_permit_in_tells_the_wait_and_takes_nothing() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=1.0, fleet_guard_seconds=0.0)
    assert gate.next_permit_in().seconds == 0
    permit(gate)
    looked = gate.next_permit_in()
    assert looked.seconds == pytest.approx(1.0) and looked.reason == "fleet rate limit reached"
    assert gate.connection.zcard(keys.FLEET_CALLS) == 1 and gate.in_flight() == 1
    gate.pause(30)
    assert gate.next_permit_in().seconds == pytest.approx(30)


def test_permits_are_paced_one_interval_apart_not_sent_in_a_burst() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=50.0, fleet_guard_seconds=0.02)
    granted: list[float] = []
    while clock.now < 1_000_004.0:
        outcome = gate.acquire(max_wait=0)
        if isinstance(outcome, Permit):
            granted.append(clock.now)
            gate.release(outcome, OK)
        else:
            clock.now += outcome.seconds

    gaps = [b - a for a, b in zip(granted, granted[1:])]
    # Never a burst: at most half an interval early on the schedule of one per 1/rate.
    assert min(gaps) >= 0.01 - 1e-9
    assert max(len([t for t in granted if start <= t < start + 0.2]) for start in granted) <= 11
    assert all(granted[i + 50] - granted[i] >= 1.02 - 1e-9 for i in range(len(granted) - 50))
    assert len(granted) >= 4 * 50 / 1.02 - 1  # and close to the rate: 50 per window + guard


def test_the_pacing_schedule_does_not_drift_when_permits_are_taken_late() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=50.0, fleet_guard_seconds=0.02)
    granted = 0
    while clock.now < 1_000_002.0:
        outcome = gate.acquire(max_wait=0)
        if isinstance(outcome, Permit):
            granted += 1
            gate.release(outcome, OK)
            clock.now += 0.004  # the next caller comes back a little late every time
        else:
            clock.now += outcome.seconds + 0.004
    assert granted >= 2 * 50 / 1.02 - 2


def test_stamp_moves_a_permit_later_in_the_window_never_earlier() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=1.0, fleet_guard_seconds=0.0)
    first = permit(gate)
    clock.now += 0.4  # the worker claims and reads its command before the call goes out
    gate.stamp(first)
    clock.now += 0.7  # 1.1 s after the permit, 0.7 s after the call
    blocked = gate.acquire(max_wait=0)
    assert isinstance(blocked, Wait) and blocked.seconds == pytest.approx(0.3)
    clock.now -= 1.0
    gate.stamp(first)  # an earlier time is ignored
    clock.now += 1.0
    assert isinstance(gate.acquire(max_wait=0), Wait)
    clock.now += 0.3
    permit(gate)


def test_work_withdrawn_while_it_waits_takes_no_permit_and_leaves_the_schedule_alone() -> None:
    from ukcancel import keys
    from ukcancel.fleet import UNWANTED_REASON

    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=2.0, fleet_guard_seconds=0.0)
    permit(gate)  # the next permit is due one interval (0.5 s) later
    due_before = gate.connection.get(keys.FLEET_NEXT_DUE)
    asked: list[float] = []

    def wanted() -> bool:
        asked.append(clock.now)
        return False  # withdrawn meanwhile

    outcome = gate.acquire(max_wait=2.0, wanted=wanted)
    assert outcome == Wait(0.0, UNWANTED_REASON)
    assert len(asked) == 1  # asked after the first wait, not before the first try
    assert gate.connection.zcard(keys.FLEET_CALLS) == 1  # no second permit in the window
    assert gate.connection.get(keys.FLEET_NEXT_DUE) == due_before  # the pacing did not move on
    assert gate.in_flight() == 1


def test_work_still_wanted_gets_its_permit_after_waiting() -> None:
    clock = FakeClock(1_000_000.0)
    gate = make_gate(clock, fleet_rate_per_second=2.0, fleet_guard_seconds=0.0)
    permit(gate)
    assert isinstance(gate.acquire(max_wait=2.0, wanted=lambda: True), Permit)
