"""One worker run of a cancel command (`ukcancel.worker.cancellation.CancellationRun`).

The runtime's store is fakeredis, the fleet gate always grants, and the UKSSDC is the simulator
over real HTTP with faults injected. No Celery message is sent: commands are enqueued with the
queue's dispatch replaced, and each `run()` stands for one delivery of a Celery task.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from support import FakeClock  # tests/support.py

from ukcancel import keys
from ukcancel.assemble import create_runtime
from ukcancel.command import ABORTED, COMPLETED, QUEUED, RETRYING, CancelCommand, CommandState
from ukcancel.fleet import FAILED, UNUSED, FleetGate, Permit, Wait
from ukcancel.outcome import CONFIRMED_CANCELLED_TEXT, CONFIRMED_FINISHED_TEXT
from ukcancel.products import normalise
from ukcancel.retry import backoff_delay
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer
from ukcancel.worker.cancellation import CancellationRun, RunResult
from ukcancel.worker.ukssdc import UkssdcClient, parse_retry_after

ASTRO = "astro@example.org"
OTHER = "other@example.org"
CANCELLED_OK = "Job cancelled OK"
ALREADY_FINISHED = "Job could not be cancelled - has it already finished?"
OUTCOME_UNKNOWN = "Outcome unknown - an error prevented the server from determining whether the job was cancelled"
ALL_SHORTS = "lc,spec,psf,enh,xastrom,image,sourceDet"


class OpenGate(FleetGate):
    """A fleet gate that always grants, remembering what it was told.

    Only Redis-facing primitives are replaced: `FleetGate.permit` itself runs as shipped.
    """

    def __init__(self, wait: Wait | None = None) -> None:  # no Redis: the primitives below are all it uses
        self.wait = wait
        self.acquired = 0
        self.released: list[bool] = []
        self.unused = 0
        self.stamped: list[str] = []
        self.paused: list[float] = []
        self.clock = lambda: 1000.0  # what `FleetGate.permit` reads to turn a Retry-After into a pause

    def acquire(self, max_wait: float | None = None, wanted: Callable[[], bool] | None = None,
                while_waiting: object = None) -> Permit | Wait:
        if self.wait is not None:
            return self.wait
        self.acquired += 1
        return Permit(f"permit-{self.acquired}", probe=False)

    def release(self, permit: Permit, outcome: str, *, pause_until: float | None = None) -> None:
        if outcome == UNUSED:
            self.unused += 1
            return
        self.released.append(outcome == FAILED)  # True: the breaker heard of a transient failure
        if pause_until is not None:
            self.paused.append(pause_until - self.clock())

    def stamp(self, permit: Permit) -> None:
        self.stamped.append(permit.id)


@dataclass
class Harness:
    sim: SimulatorServer
    runtime: Runtime
    client: UkssdcClient
    clock: FakeClock
    gate: OpenGate = field(default_factory=OpenGate)
    rand: Callable[[float, float], float] = lambda low, high: high
    countdowns: list[float] = field(default_factory=list)

    def submit(self, job_id: int, products: list[str] | str, user: str = ASTRO) -> CancelCommand:
        # As the API stores it: long names, duplicates collapsed, or "all".
        names = products if isinstance(products, str) else normalise(products)
        command = CancelCommand(job_id=job_id, user_id=user, products=names)
        self.runtime.schedule.enqueue([command])
        return command

    def run(self, holder: str = "turn-1") -> RunResult:
        return CancellationRun(self.runtime, holder, self.gate, self.client, rand=self.rand).run()  # type: ignore[arg-type]

    def due_in(self, command: CancelCommand) -> float | None:
        """Seconds until the command is due again on the schedule (None: it is not)."""
        at = self.runtime.schedule.due_at(command.id)
        return None if at is None else at - self.clock.now

    def run_to_end(self, holder: str = "turn-1", limit: int = 20) -> RunResult:
        """Run turns as the workers would: again each time the command falls due (the clock is moved
        to that time instead of sleeping it out)."""
        for _ in range(limit):
            result = self.run(holder)
            due = self.runtime.connection.zrange(keys.DUE, 0, 0, withscores=True)
            if not due:
                return result
            at = due[0][1]
            if at > self.clock.now:
                self.countdowns.append(at - self.clock.now)
                self.clock.now = at
        raise AssertionError(f"still due again after {limit} runs")

    def leases(self) -> int:
        return self.runtime.connection.zcard(keys.LEASES) + self.runtime.connection.hlen(keys.LEASE_HOLDERS)

    def record(self, command: CancelCommand) -> CancelCommand:
        stored = self.runtime.registry.get(command.id)
        assert stored is not None
        return stored

    def calls(self, endpoint: str = "canceljob.php") -> list[dict[str, Any]]:
        return [entry for entry in self.sim.state.log() if entry["endpoint"] == endpoint]

    def whats(self, endpoint: str = "canceljob.php") -> list[str]:
        return [entry["body"]["what"] for entry in self.calls(endpoint)]


def make_harness(sim: SimulatorServer, client_class: type[UkssdcClient] = UkssdcClient, **overrides: Any) -> Harness:
    options: dict[str, Any] = {
        "ukssdc_base_url": sim.base_url,
        "ukssdc_connect_timeout_seconds": 2.0,
        "ukssdc_timeout_seconds": 0.5,
        "retry_base_seconds": 0.01,
        "retry_max_delay_seconds": 0.5,
        "max_attempts": 4,
    }
    options.update(overrides)
    settings_ = Settings(**options)
    runtime = create_runtime(settings_, connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    runtime.schedule.dispatch = lambda count: None
    clock = FakeClock()
    runtime.schedule.clock = runtime.registry.clock = clock
    client = client_class(
        settings_.ukssdc_base_url,
        settings_.ukssdc_api_version,
        settings_.ukssdc_connect_timeout_seconds,
        settings_.ukssdc_timeout_seconds,
    )
    return Harness(sim, runtime, client, clock)


@pytest.fixture
def h(simulator: SimulatorServer) -> Harness:
    return make_harness(simulator)


def history(command: CancelCommand) -> list[str]:
    return [entry["state"] for entry in command.history]


# ---- straight answers ------------------------------------------------------------------------


def test_success_cancels_the_product_and_stores_the_guides_first_tuple(h: Harness) -> None:
    command = h.submit(1001, ["LightCurve"])
    result = h.run()
    assert result == RunResult(command.id, COMPLETED)
    done = h.record(command)
    assert done.result == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert done.state == COMPLETED and done.attempts == 1 and done.server_ok == 1
    assert history(done) == [QUEUED, CommandState.RUNNING, COMPLETED]
    assert h.sim.state.product_state(1001, "lc") == -4
    assert h.sim.state.product_state(1001, "psf") == 2  # not asked for, untouched
    [call] = h.calls()
    assert call["body"] == {
        "UserID": ASTRO,
        "JobID": 1001,
        "what": "lc",
        "api_name": "xrt_prods",
        "api_version": "1.12",
    }
    assert h.calls("checkProductStatus.php") == []
    assert h.leases() == 0  # lease released
    assert h.gate.released == [False]
    assert h.gate.stamped == ["permit-1"]  # the permit's time was moved to just before the call


def test_the_guides_two_calls_give_1_then_2(h: Harness) -> None:
    first = h.submit(1001, ["LightCurve"])
    h.run("turn-a")
    second = h.submit(1001, "all")
    h.run("turn-b")
    assert h.record(first).result == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert h.record(second).result == [
        2,
        {
            "LightCurve": {"code": 1, "text": ALREADY_FINISHED},
            "StandardPos": {"code": 0, "text": CANCELLED_OK},
        },
    ]
    assert len(h.calls("listOldJobs.php")) == 1
    assert h.calls("checkProductStatus.php") == []  # an unambiguous "finished" is taken as it is


def test_partial_when_one_product_already_completed(h: Harness) -> None:
    command = h.submit(1002, ["lc", "StandardPos", "psf"])  # short, long and a duplicate
    h.run()
    assert h.record(command).result == [
        2,
        {"LightCurve": {"code": 0, "text": CANCELLED_OK}, "StandardPos": {"code": 1, "text": ALREADY_FINISHED}},
    ]
    assert h.whats() == ["lc,psf"]


def test_ok_0_for_a_job_of_another_user_is_status_0_at_once(h: Harness) -> None:
    command = h.submit(1004, ["LightCurve"])
    h.run()
    done = h.record(command)
    assert done.result == [0, {"ERROR": "Job 1004 is not owned by user astro@example.org"}]
    assert done.attempts == 1 and done.server_ok == 0
    assert h.sim.state.product_state(1004, "lc") == 2


# ---- transient failures and the retry budget -------------------------------------------------


def test_503_twice_is_rescheduled_then_succeeds(h: Harness) -> None:
    h.sim.state.add_faults(Fault("http503", count=2))
    command = h.submit(1001, ["LightCurve"])
    assert h.run() == RunResult(command.id, RETRYING)
    waiting = h.record(command)
    assert waiting.state == RETRYING and waiting.result is None
    assert "HTTP 503" in (waiting.last_error or "")
    countdown = h.due_in(command)
    assert countdown is not None and 0 < countdown <= 0.5  # on the due list, not in a Celery countdown
    assert waiting.next_attempt_at == h.runtime.schedule.due_at(command.id)  # GET shows when
    assert h.leases() == 0  # the slot and the lease are free while it waits
    assert h.run() == RunResult(None, None)  # not due yet: a turn now finds nothing
    h.run_to_end()
    done = h.record(command)
    assert done.result == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert done.attempts == 3
    assert history(done) == [QUEUED, CommandState.RUNNING, RETRYING, CommandState.RUNNING, RETRYING, CommandState.RUNNING, COMPLETED]
    assert len(h.calls()) == 3
    assert h.gate.released == [True, True, False]  # the breaker heard of both failures


@pytest.mark.parametrize("kind", ["http500", "http429", "garbled", "html200", "no_ok", "drop", "read_timeout"])
def test_other_transient_failures_are_retried_to_the_right_tuple(h: Harness, kind: str) -> None:
    h.sim.state.add_faults(Fault(kind, seconds=2.0) if kind == "read_timeout" else Fault(kind))
    command = h.submit(1001, ["LightCurve", "StandardPos"])
    h.run_to_end()
    done = h.record(command)
    assert done.result == [
        1,
        {"LightCurve": {"code": 0, "text": CANCELLED_OK}, "StandardPos": {"code": 0, "text": CANCELLED_OK}},
    ]
    assert done.attempts == 2
    assert len(h.countdowns) == 1
    # The fault stopped the request before the server acted, so the retry's code 0 is trusted.
    assert h.calls("checkProductStatus.php") == []


def test_retries_exhausted_give_minus_1_with_attempts_equal_to_the_budget(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, max_attempts=3)
    h.sim.state.add_faults(Fault("http503", count=10))
    command = h.submit(1001, ["LightCurve"])
    h.run_to_end()
    done = h.record(command)
    assert done.state == COMPLETED and done.attempts == 3
    assert done.result is not None and done.result[0] == -1
    assert done.result[1]["ERROR"].startswith("gave up after 3 attempts: HTTP 503")
    assert done.last_error == done.result[1]["ERROR"]
    assert len(h.calls()) == 3 and len(h.countdowns) == 2
    assert h.sim.state.product_state(1001, "lc") == 3


def test_a_permanent_http_error_is_final_at_once(h: Harness) -> None:
    h.sim.state.add_faults(Fault("http404", count=5))
    command = h.submit(1001, ["LightCurve"])
    h.run()  # no Reschedule
    done = h.record(command)
    assert done.result is not None and done.result[0] == -1
    assert "HTTP 404" in done.result[1]["ERROR"]
    assert done.attempts == 1 and len(h.calls()) == 1


def test_a_wrong_base_url_is_a_permanent_404(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, ukssdc_base_url=simulator.base_url + "/not-here")
    command = h.submit(1001, ["LightCurve"])
    h.run()
    assert h.record(command).result[0] == -1  # type: ignore[index]


def test_retry_after_pauses_the_fleet_and_sets_the_countdown(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, retry_max_delay_seconds=10.0)
    h.rand = lambda low, high: low  # jitter would say "at once"; the server said 7 s
    h.sim.state.add_faults(Fault("http503", retry_after=7))
    command = h.submit(1001, ["LightCurve"])
    assert h.run() == RunResult(command.id, RETRYING)
    assert h.due_in(command) == pytest.approx(7.0)
    assert h.gate.paused == [7.0]
    assert h.record(command).state == RETRYING


def test_connection_refused_is_transient_and_not_ambiguous(simulator: SimulatorServer) -> None:
    closed_port = "http://127.0.0.1:9"  # discard port: nothing listens
    h = make_harness(simulator, ukssdc_base_url=closed_port, max_attempts=2)
    command = h.submit(1001, ["LightCurve"])
    h.run_to_end()
    done = h.record(command)
    assert done.result is not None and done.result[0] == -1
    assert "gave up after 2 attempts: connection failed" in done.result[1]["ERROR"]
    assert not done.ambiguous


def test_no_capacity_claims_nothing_and_counts_no_attempt(h: Harness) -> None:
    h.gate.wait = Wait(2.0, "fleet paused by the UKSSDC's Retry-After")
    command = h.submit(1001, ["LightCurve"])
    result = h.run()
    assert result == RunResult(None, None, waited=True)  # the lane goes on (its successor is sent)
    waiting = h.record(command)
    assert waiting.state == QUEUED and waiting.attempts == 0  # still in line, no attempt began
    assert h.runtime.schedule.depth() == {ASTRO: 1} and h.leases() == 0
    assert h.calls() == []
    h.gate.wait = None
    assert h.run() == RunResult(command.id, COMPLETED)
    assert h.record(command).attempts == 1


def test_a_turn_with_nothing_runnable_takes_no_permit(h: Harness) -> None:
    assert h.run() == RunResult(None, None)
    assert h.gate.acquired == 0 and h.gate.unused == 0


def test_the_permit_holder_claims_the_fairest_command_at_that_moment(h: Harness) -> None:
    bulk = [h.submit(2001 + n, ["LightCurve"], user="bulk@example.org") for n in range(3)]
    single = h.submit(1001, ["LightCurve"])
    first, second = h.run("turn-1"), h.run("turn-2")
    # Round robin at the moment of the permit: one bulk command, then the single, not the bulk's second.
    assert first.command_id == bulk[0].id and second.command_id == single.id


# ---- ambiguous outcomes ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["read_timeout_after_processing", "drop_after_processing", "truncated"])
def test_an_ambiguous_failure_is_confirmed_by_a_status_check(h: Harness, kind: str) -> None:
    h.sim.state.add_faults(Fault(kind, seconds=2.0) if "timeout" in kind else Fault(kind))
    command = h.submit(1001, ["LightCurve"])
    assert h.run() == RunResult(command.id, RETRYING)
    waiting = h.record(command)
    assert waiting.ambiguous and waiting.state == RETRYING
    assert h.sim.state.product_state(1001, "lc") == -4  # the first request did cancel it
    h.run_to_end()
    done = h.record(command)
    # The retry hears "could not be cancelled" (it is cancelled already); the check says by whom.
    assert done.result == [1, {"LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT}}]
    assert "confirmed by a status check" in CONFIRMED_CANCELLED_TEXT
    assert done.attempts == 2
    assert [c["body"]["what"] for c in h.calls("checkProductStatus.php")] == ["lc"]


def test_ambiguity_does_not_turn_a_product_finished_before_into_a_cancellation(h: Harness) -> None:
    h.sim.state.add_faults(Fault("read_timeout_after_processing", seconds=2.0))
    command = h.submit(1002, ["LightCurve", "StandardPos"])
    h.run_to_end()
    done = h.record(command)
    assert done.result == [
        2,
        {
            "LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT},
            "StandardPos": {"code": 1, "text": ALREADY_FINISHED},  # complete (4) before we came
        },
    ]


def test_a_command_whose_lease_expired_is_taken_over_as_ambiguous(h: Harness) -> None:
    command = h.submit(1001, ["LightCurve"])
    # A turn claimed the command, started it, reached the server, then its worker died.
    claim = h.runtime.schedule.claim("dead-turn")
    assert claim is not None and claim.command_id == command.id and not claim.takeover
    assert h.runtime.registry.start_attempt(command.id).moved
    requests.post(
        f"{h.sim.base_url}/canceljob.php", json={"UserID": ASTRO, "JobID": 1001, "what": "lc"}, timeout=5
    ).raise_for_status()
    assert h.run("turn-2") == RunResult(None, None)  # the lease is live: nobody else may take it
    h.clock.now += h.runtime.settings.lease_seconds + 0.001  # no renewal came: the lease lapses
    result = h.run("turn-2")
    assert result == RunResult(command.id, COMPLETED)
    done = h.record(command)
    assert done.result == [1, {"LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT}}]
    # The dead run's request was made outside this harness (by hand, above), so only the run that
    # took over counted one: an attempt is counted by the run that sends a request.
    assert done.ambiguous and done.attempts == 1
    assert history(done) == [QUEUED, CommandState.RUNNING, CommandState.RUNNING, COMPLETED]
    assert history(done).count(COMPLETED) == 1


def test_a_takeover_when_the_dead_run_never_reached_the_server(h: Harness) -> None:
    command = h.submit(1001, ["LightCurve"])
    h.runtime.schedule.claim("dead-turn")
    h.runtime.registry.start_attempt(command.id)
    h.clock.now += h.runtime.settings.lease_seconds + 0.001
    h.run("turn-2")
    assert h.record(command).result == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    assert h.calls("checkProductStatus.php") == []


def test_a_stale_lease_on_a_completed_command_changes_nothing(h: Harness) -> None:
    command = h.submit(1001, ["LightCurve"])
    h.run("turn-1")
    before = h.record(command)
    calls_before = len(h.sim.state.log())
    # A lease left behind, e.g. by a run that was taken over while the first one finished.
    h.runtime.connection.zadd(keys.LEASES, {command.id: h.clock.now - 1})
    h.runtime.connection.hset(keys.LEASE_HOLDERS, command.id, "lost-turn")
    assert h.run("turn-dup") == RunResult(None, None)
    assert h.record(command) == before
    assert len(h.sim.state.log()) == calls_before
    assert h.leases() == 0


def test_a_withdrawn_command_is_skipped_and_the_ukssdc_never_called(h: Harness) -> None:
    withdrawn = h.submit(1001, ["LightCurve"])
    assert h.runtime.registry.withdraw(withdrawn.id).moved
    assert h.run() == RunResult(None, None)
    assert h.record(withdrawn).state == ABORTED
    assert h.sim.state.log() == []


# ---- code 4: outcome unknown -----------------------------------------------------------------


def test_code_4_on_a_product_the_server_did_cancel_becomes_0(h: Harness) -> None:
    h.sim.state.add_faults(Fault("codes", codes={"lc": 4}))
    command = h.submit(1001, ["LightCurve", "StandardPos"])
    h.run()
    assert h.record(command).result == [
        1,
        {"LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT}, "StandardPos": {"code": 0, "text": CANCELLED_OK}},
    ]
    assert h.whats("checkProductStatus.php") == ["lc"]  # only the doubtful product is checked


def test_code_4_on_a_finished_product_becomes_1(h: Harness) -> None:
    h.sim.state.add_faults(Fault("codes", codes={"psf": 4}))
    command = h.submit(1002, ["StandardPos"])
    h.run()
    assert h.record(command).result == [2, {"StandardPos": {"code": 1, "text": CONFIRMED_FINISHED_TEXT}}]


def test_code_4_stays_when_the_status_check_cannot_tell(h: Harness) -> None:
    h.sim.state.add_faults(Fault("codes", codes={"spec": 4}))
    command = h.submit(1001, ["Spectrum"])  # not part of the job: the status check leaves it out
    h.run()
    assert h.record(command).result == [2, {"Spectrum": {"code": 4, "text": OUTCOME_UNKNOWN}}]


class FailsToCancelLightCurve(UkssdcClient):
    """The server answers, but its error kept the light curve from being cancelled (it stays queued)."""

    sim: SimulatorServer
    undo = 0

    def cancel_job(self, user_id: str, job_id: int, shorts: list[str]) -> Any:
        reply = super().cancel_job(user_id, job_id, shorts)
        if self.undo > 0:
            self.undo -= 1
            self.sim.state.set_product_state(job_id, "lc", 2)
        return reply


def test_code_4_on_a_still_active_product_retries_that_product_only(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, client_class=FailsToCancelLightCurve)
    h.client.sim, h.client.undo = simulator, 1  # type: ignore[attr-defined]
    h.sim.state.add_faults(Fault("codes", codes={"lc": 4}))
    command = h.submit(1001, ["LightCurve", "StandardPos"])
    assert h.run().state == RETRYING
    waiting = h.record(command)
    assert waiting.state == RETRYING
    assert waiting.settled == {"psf": {"code": 0, "text": CANCELLED_OK}}
    assert "outcome unknown and product still active: LightCurve" in (waiting.last_error or "")
    h.run_to_end()
    done = h.record(command)
    assert done.result == [
        1,
        {"LightCurve": {"code": 0, "text": CANCELLED_OK}, "StandardPos": {"code": 0, "text": CANCELLED_OK}},
    ]
    assert h.whats() == ["lc,psf", "lc"]


def test_code_4_still_active_when_the_budget_runs_out_reports_code_4(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, client_class=FailsToCancelLightCurve, max_attempts=2)
    h.client.sim, h.client.undo = simulator, 2  # type: ignore[attr-defined]
    h.sim.state.add_faults(Fault("codes", codes={"lc": 4}, count=2))
    command = h.submit(1001, ["LightCurve", "StandardPos"])
    h.run_to_end()
    done = h.record(command)
    assert done.result == [
        2,
        {"LightCurve": {"code": 4, "text": OUTCOME_UNKNOWN}, "StandardPos": {"code": 0, "text": CANCELLED_OK}},
    ]
    assert done.attempts == 2
    assert (done.last_error or "").startswith("gave up after 2 attempts: outcome unknown")


# ---- "all" -----------------------------------------------------------------------------------


def test_all_is_resolved_through_list_old_jobs(h: Harness) -> None:
    command = h.submit(1002, "all")
    h.run()
    done = h.record(command)
    assert done.result is not None
    assert list(done.result[1]) == ["LightCurve", "Spectrum", "StandardPos", "AstromPos"]
    assert {name: entry["code"] for name, entry in done.result[1].items()} == {
        "LightCurve": 0,
        "Spectrum": 0,
        "StandardPos": 1,
        "AstromPos": 0,
    }
    assert done.result[0] == 2
    assert h.calls("listOldJobs.php")[0]["body"]["UserID"] == ASTRO


def test_all_cancels_a_source_detection_too(simulator: SimulatorServer) -> None:
    # listOldJobs.php reports no SourceDet flag, yet "all" must not leave a SourceDet running.
    h = make_harness(simulator)
    command = h.submit(1005, "all", user=OTHER)
    h.run()
    done = h.record(command)
    assert done.result == [
        1,
        {
            "StandardPos": {"code": 0, "text": CANCELLED_OK},
            "EnhancedPos": {"code": 0, "text": CANCELLED_OK},
            "SourceDet": {"code": 0, "text": CANCELLED_OK},
        },
    ]
    assert h.sim.state.product_state(1005, "sourceDet") == -4


def test_all_resolution_is_kept_across_retries(h: Harness) -> None:
    h.sim.state.add_faults(Fault("http503"))
    command = h.submit(1001, "all")
    h.run_to_end()
    assert h.record(command).result[0] == 1  # type: ignore[index]
    assert len(h.calls("listOldJobs.php")) == 1


class ListsOnlyRecentJobs(UkssdcClient):
    """listOldJobs.php as it would look if the job had dropped off the list."""

    hidden: int = 0

    def old_jobs(self, user_id: str) -> Any:
        jobs = super().old_jobs(user_id)
        return [job for job in jobs if job.get("JobID") != self.hidden]


def test_all_on_an_unlisted_job_asks_every_product_and_drops_code_2(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, client_class=ListsOnlyRecentJobs)
    h.client.hidden = 1001  # type: ignore[attr-defined]
    command = h.submit(1001, "all")
    h.run()
    done = h.record(command)
    assert h.whats() == [ALL_SHORTS]
    assert done.result == [
        1,
        {"LightCurve": {"code": 0, "text": CANCELLED_OK}, "StandardPos": {"code": 0, "text": CANCELLED_OK}},
    ]
    assert done.unlisted and done.resolved == ALL_SHORTS.split(",")


def test_all_on_a_job_with_no_listed_flags_asks_every_product(simulator: SimulatorServer) -> None:
    simulator.state.load_jobs(
        [*simulator.state.jobs(), {"JobID": 1010, "UserID": ASTRO, "products": {"sourceDet": 2}}],
        ["nojobs@example.org"],
    )
    h = make_harness(simulator)
    command = h.submit(1010, "all")
    h.run()
    assert h.record(command).result == [1, {"SourceDet": {"code": 0, "text": CANCELLED_OK}}]
    assert h.whats() == [ALL_SHORTS]


def test_all_for_an_unknown_user_is_status_0_from_list_old_jobs(h: Harness) -> None:
    command = h.submit(1001, "all", user="nobody@example.org")
    h.run()
    assert h.record(command).result == [0, {"ERROR": "The user `nobody@example.org` is not recognised / validated"}]
    assert h.calls() == []


def test_all_for_a_registered_user_not_owning_the_job_is_status_0(h: Harness) -> None:
    command = h.submit(1001, "all", user="nojobs@example.org")
    h.run()
    assert h.record(command).result == [0, {"ERROR": "Job 1001 is not owned by user nojobs@example.org"}]


# ---- defects do not leave a command running --------------------------------------------------


class BrokenClient(UkssdcClient):
    def cancel_job(self, user_id: str, job_id: int, shorts: list[str]) -> Any:
        raise KeyError("a defect")


def test_an_internal_error_completes_the_command_with_minus_1(simulator: SimulatorServer) -> None:
    h = make_harness(simulator, client_class=BrokenClient)
    command = h.submit(1001, ["LightCurve"])
    h.run()
    done = h.record(command)
    assert done.state == COMPLETED
    assert done.result == [-1, {"ERROR": "internal error in the worker: KeyError"}]


# ---- back-off -------------------------------------------------------------------------------


def test_backoff_is_full_jitter_over_an_exponential_ceiling() -> None:
    seen: list[tuple[float, float]] = []

    def rand(low: float, high: float) -> float:
        seen.append((low, high))
        return high

    assert [backoff_delay(n, 2.0, 300.0, rand=rand) for n in range(1, 10)] == [
        2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0
    ]
    assert seen[:3] == [(0, 2.0), (0, 4.0), (0, 8.0)]
    assert backoff_delay(3, 2.0, 300.0, rand=lambda low, high: low) == 0


def test_backoff_honours_retry_after_up_to_the_cap() -> None:
    assert backoff_delay(1, 2.0, 300.0, retry_after=120.0, rand=lambda low, high: high) == 120.0
    assert backoff_delay(8, 2.0, 300.0, retry_after=1.0, rand=lambda low, high: high) == 256.0
    assert backoff_delay(1, 2.0, 300.0, retry_after=3600.0, rand=lambda low, high: high) == 300.0


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(1, 10**6),
    base=st.floats(0.001, 100),
    extra=st.floats(0, 1000),
    retry_after=st.none() | st.floats(0, 5000),
    fraction=st.floats(0, 1),
)
def test_backoff_stays_within_zero_and_the_cap(
    attempt: int, base: float, extra: float, retry_after: float | None, fraction: float
) -> None:
    cap = base + extra
    delay = backoff_delay(attempt, base, cap, retry_after, rand=lambda low, high: low + fraction * (high - low))
    assert 0 <= delay <= cap
    if retry_after is not None:
        assert delay >= min(retry_after, cap)


def test_retry_after_header_forms() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None and parse_retry_after("-5") is None
    http_date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(http_date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
