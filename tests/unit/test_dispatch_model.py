"""The dispatch core against a model: Hypothesis drives random interleavings of work and faults.

The real core classes (the schedule, the command records and their Lua transitions, the fleet gate,
the reconciler, the callback outbox, `CancellationRun`) run on one fakeredis server with Lua and
one injected clock, which is also the fakeredis server's own (its key expiries, `redis_time_is`), so
an example replays exactly however slowly the machine runs it. Around them, in this file only:

- a broker of anonymous turns that can refuse sends (`Broker`);
- a UKSSDC that keeps each job's product states and answers each call as scripted: a reply, a
  transient failure, a 503 with Retry-After, a read timeout or a lost reply after acting on it,
  code 4, or a call that freezes its worker until the test thaws it (`Ukssdc`);
- connections that die (`WorkerDied`, as SIGKILL does) or raise a Redis error at a chosen round
  trip of a turn (`fault_connection`), so a worker can die between any two round trips.

After every step the invariants the schedule documents (`ukcancel.schedule`) are checked:

- I2 one results-stream entry per terminal command, and a callback pending exactly while it is
  in the outbox;
- I3 states never go backwards (terminal is final; queued never comes back);
- I4 no window over the fleet limit in force when a call was made, at any accepted rate;
- I5 a turn that finds no permit sends no successor, and the reconciler sends none while the gate
  says no permit is near: a waiting fleet does not spin;
- I6 an accepted command always exists (enqueue never answers "nothing enqueued");
- I7 a command's attempts never exceed the runs that sent the UKSSDC a request for it;
and, once faults stop, I1: draining with the reconciler and turns alone ends every command within
bounded simulated time, with a tuple that agrees with what the UKSSDC did.

`UKCANCEL_MODEL_EXAMPLES` sets how many examples run (`ops/bench/model.py` runs many more).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import fakeredis
import redis
from fakeredis import FakeRedisConnection
from fakeredis._socket import _base as fakeredis_socket
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support import FakeClock  # tests/support.py

from ukcancel import keys, lifecycle, submission
from ukcancel.batch import Batch, BatchRegistry
from ukcancel.callback import DELIVERED, PENDING, CallbackOutbox
from ukcancel.command import (
    ABORTED,
    COMPLETED,
    QUEUED,
    RETRYING,
    TERMINAL,
    CancelCommand,
    CommandRegistry,
    CommandState,
)
from ukcancel.dispatch import DispatchError
from ukcancel.fleet import FleetGate, rate_window
from ukcancel.reconciler import Reconciler
from ukcancel.schedule import Schedule
from ukcancel.settings import MIN_FLEET_RATE_PER_SECOND, Settings
from ukcancel.worker.cancellation import CancellationRun, RunResult
from ukcancel.worker.ukssdc import CHECK_STATUS, LIST_OLD_JOBS, TransientFailure, UkssdcClient

EXAMPLES = int(os.environ.get("UKCANCEL_MODEL_EXAMPLES", "200"))
USERS = ("a@example.org", "b@example.org", "c@example.org")
SHORTS = ("lc", "spec", "psf")
LONG = {"lc": "LightCurve", "spec": "Spectrum", "psf": "StandardPos"}
RANK = {QUEUED: 0, CommandState.RUNNING: 1, RETRYING: 1, COMPLETED: 2, ABORTED: 2}
OUTCOMES = ("ok", "ok", "ok", "transient", "busy", "read_timeout", "lost_reply", "code4")
SETTINGS = Settings(
    fleet_rate_per_second=5.0,
    fleet_max_in_flight=3,
    fleet_max_wait_seconds=2.0,
    fleet_guard_seconds=0.04,
    breaker_failure_threshold=3,
    breaker_cooldown_seconds=5.0,
    max_attempts=4,
    retry_base_seconds=0.5,
    retry_max_delay_seconds=5.0,
    dispatch_lanes=3,
    lease_seconds=10.0,
    reconcile_seconds=0.5,
    ukssdc_timeout_seconds=1.0,
    ukssdc_connect_timeout_seconds=1.0,
    result_ttl_seconds=10**7,  # nothing expires within a run
)


class WorkerDied(BaseException):
    """The worker process is gone (SIGKILL): nothing of it runs again, no `except Exception` sees it."""


@dataclass
class FaultPlan:
    """Fail the `at`-th round trip of one connection: `die` before sending it, `die_after` once Redis
    has run it (the reply is lost), or `error` (a Redis error, once)."""

    at: int
    kind: str
    trips: int = 0
    dead: bool = False

    def before(self) -> None:
        if self.dead:
            raise WorkerDied
        self.trips += 1
        if self.trips == self.at and self.kind == "die":
            self.dead = True
            raise WorkerDied
        if self.trips == self.at and self.kind == "error":
            raise redis.ConnectionError("connection reset by the model")

    def after(self) -> None:
        if self.trips == self.at and self.kind == "die_after":
            self.dead = True
            raise WorkerDied


@contextlib.contextmanager
def redis_time_is(clock: FakeClock) -> Iterator[None]:
    """fakeredis expires keys (a `PX` the gate or the reconciler sets) by the model's clock rather than
    the wall clock: otherwise a slow run expires a key a fast run did not, the same steps meet
    another state, and Hypothesis cannot replay an example."""
    wall = fakeredis_socket.time
    fakeredis_socket.time = SimpleNamespace(time=clock)  # the module reads only time.time()
    try:
        yield
    finally:
        fakeredis_socket.time = wall


def fault_connection(server: fakeredis.FakeServer, plan: FaultPlan | None) -> redis.Redis:
    """A client of `server` whose round trips follow `plan` (a healthy one without)."""
    if plan is None:
        return fakeredis.FakeRedis(server=server)

    class Faulty(FakeRedisConnection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            plan.before()
            super().send_packed_command(command, check_health)

        def read_response(self, **kwargs: Any) -> Any:
            reply = super().read_response(**kwargs)
            plan.after()
            return reply

    return fakeredis.FakeRedis(server=server, connection_class=Faulty)


class Broker:
    """Anonymous turns waiting for a worker; refuses every send while `down`."""

    def __init__(self) -> None:
        self.turns = 0
        self.down = False
        self.sent = 0
        self.expansions: list[str] = []

    def send_turns(self, count: int) -> None:
        if self.down:
            raise DispatchError("the model's broker is down")
        self.turns += count
        self.sent += count

    def queued_turns(self) -> int:
        if self.down:
            raise DispatchError("the model's broker is down")
        return self.turns

    def expand_all_active(self, batch_id: str) -> None:
        self.expansions.append(batch_id)

    def refresh_jobs(self, user_id: str) -> None:
        pass


@dataclass
class Call:
    at: float
    endpoint: str
    job_id: int | None
    run: str
    rate: float


@dataclass
class Ukssdc:
    """The server side: product states per job, and every request it received."""

    clock: FakeClock
    states: dict[int, dict[str, int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    rate: float = SETTINGS.fleet_rate_per_second

    def add_job(self, job_id: int, active: list[str], finished: list[str]) -> None:
        self.states[job_id] = {**{s: 3 for s in active}, **{s: 4 for s in finished}}

    def cancel(self, job_id: int, shorts: list[str]) -> dict[str, Any]:
        codes: dict[str, int] = {}
        for short in shorts:
            state = self.states.get(job_id, {}).get(short)
            if state is None:
                codes[short] = 2
            elif state in (1, 2, 3, 5):
                self.states[job_id][short] = -4
                codes[short] = 0
            else:
                codes[short] = 1
        ok = 1 if all(code == 0 for code in codes.values()) else 2
        return {"OK": ok, "JobID": job_id, "statusCodes": codes, "status": {s: f"code {c}" for s, c in codes.items()}}


class ModelClient(UkssdcClient):
    """The worker's real client (its parsing, its failures), talking to the model `Ukssdc`.

    `script` is the outcome of each call this run makes, in order (then "ok"); "freeze" blocks the
    call, after it reached the server, until `thaw` is set.
    """

    def __init__(self, server: Ukssdc, run: str, script: list[str]) -> None:
        super().__init__("http://ukssdc.invalid", "1.12", 1.0, 1.0)
        self.server = server
        self.run = run
        self.script = list(script)
        self.frozen = threading.Event()
        self.thaw = threading.Event()

    def _exchange(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        outcome = self.script.pop(0) if self.script else "ok"
        job_id = body.get("JobID")
        self.server.calls.append(Call(self.server.clock(), endpoint, job_id, self.run, self.server.rate))
        if outcome == "transient":
            raise TransientFailure("HTTP 502 Bad Gateway", kind="http_502", status_code=502)
        if outcome == "busy":
            raise TransientFailure("HTTP 503", retry_after=3.0, kind="http_503", status_code=503)
        reply = self._answer(endpoint, body)
        if outcome == "freeze":
            self.frozen.set()
            self.thaw.wait(30)
            raise TransientFailure("read timeout", maybe_processed=True, kind="read_timeout")
        if outcome == "read_timeout":
            raise TransientFailure("read timeout", maybe_processed=True, kind="read_timeout")
        if outcome == "lost_reply":
            raise TransientFailure("connection reset after sending", maybe_processed=True, kind="connection")
        if outcome == "code4" and "statusCodes" in reply:
            reply["statusCodes"] = {short: 4 for short in reply["statusCodes"]}
            reply["OK"] = 2
        return reply

    def _answer(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        job_id = int(body.get("JobID") or 0)
        if endpoint == CHECK_STATUS:
            states = self.server.states.get(job_id, {})
            shorts = str(body["what"]).split(",")
            return {"OK": 1, **{s: {"statusCode": states[s], "statusText": "x"} for s in shorts if s in states}}
        if endpoint == LIST_OLD_JOBS:
            return {"OK": 1, "jobs": []}
        return self.server.cancel(job_id, str(body["what"]).split(","))


@dataclass
class Parts:
    """The core objects of one process, on one connection (a worker's, or a dying one's)."""

    connection: redis.Redis
    registry: CommandRegistry
    schedule: Schedule
    gate: FleetGate
    batches: BatchRegistry
    settings: Settings = SETTINGS

    @classmethod
    def on(cls, connection: redis.Redis, clock: FakeClock, broker: Broker) -> Parts:
        registry = CommandRegistry(connection, SETTINGS.result_ttl_seconds, clock=clock)
        schedule = Schedule(connection, registry, broker.send_turns, lanes=SETTINGS.dispatch_lanes,
                            lease_seconds=SETTINGS.lease_seconds, clock=clock)
        # Runs are instantaneous in simulated time, and a frozen worker renews nothing: no renewal thread.
        schedule.holding = lambda command_id, holder: contextlib.nullcontext()  # type: ignore[method-assign]
        gate = FleetGate(connection, SETTINGS, clock=clock, sleep=clock.sleep)
        batches = BatchRegistry(connection, SETTINGS.result_ttl_seconds, clock=clock)
        return cls(connection, registry, schedule, gate, batches)


@dataclass
class Frozen:
    thread: threading.Thread
    client: ModelClient


class RuntimeView:
    """What `lifecycle.withdraw` and `submission` need of a runtime."""

    def __init__(self, parts: Parts) -> None:
        self.registry, self.schedule, self.batches = parts.registry, parts.schedule, parts.batches
        self.connection, self.settings = parts.connection, SETTINGS


class DispatchModel(RuleBasedStateMachine):
    """See the module docstring."""

    @initialize()
    def start(self) -> None:
        self.clock = FakeClock()
        self.redis_time = contextlib.ExitStack()
        self.redis_time.enter_context(redis_time_is(self.clock))
        self.server = fakeredis.FakeServer()
        self.broker = Broker()
        self.parts = Parts.on(fault_connection(self.server, None), self.clock, self.broker)
        self.ukssdc = Ukssdc(self.clock)
        self.outbox = CallbackOutbox(self.parts.connection, self.clock, lease_seconds=30.0)
        self.delivered: list[str] = []
        self.reconciler = self._reconciler(self.parts)
        self.commands: dict[str, int] = {}  # command id -> job id
        self.with_callback: set[str] = set()
        self.seen: dict[str, str] = {}
        self.requesting_runs: dict[int, set[str]] = defaultdict(set)
        self.frozen: list[Frozen] = []
        self.next_job = 1000
        self.turn = 0
        self.broker_sent_before = 0

    def _reconciler(self, parts: Parts) -> Reconciler:
        model = self

        class Sender:
            def free(self) -> int:
                return 2

            def offer(self, command_id: str) -> bool:
                model.delivered.append(command_id)
                parts.registry.record_callback(command_id, {"status": DELIVERED, "attempts": 1, "at": model.clock()})
                return True

        return Reconciler(parts.connection, parts.schedule, parts.batches, self.broker, "r1", gate=parts.gate,
                          max_wait=SETTINGS.fleet_max_wait_seconds, period_seconds=SETTINGS.reconcile_seconds,
                          outbox=CallbackOutbox(parts.connection, self.clock, 30.0), callbacks=Sender(),
                          clock=self.clock)

    # -- work coming in ----------------------------------------------------------------------
    def _new_command(self, user: str, products: list[str], callback: bool) -> CancelCommand:
        job_id = self.next_job
        self.next_job += 1
        active = [s for s in products if s != "psf"]
        self.ukssdc.add_job(job_id, active, [s for s in products if s == "psf"])
        # Ids in submission order, not random: Redis orders ties by member, and a replayed example
        # must meet the same order (Hypothesis refuses a rule choice that depends on chance).
        command = CancelCommand(job_id=job_id, user_id=user, products=[LONG[s] for s in products], id=f"{job_id:032x}",
                                callback_url="https://receiver.example.org/hook" if callback else None)
        return command

    @rule(user=st.sampled_from(USERS), products=st.lists(st.sampled_from(SHORTS), min_size=1, max_size=3, unique=True),
          callback=st.booleans())
    def submit(self, user: str, products: list[str], callback: bool) -> None:
        command = self._new_command(user, products, callback)
        submission.enqueue(RuntimeView(self.parts), [command])  # type: ignore[arg-type]
        self._accepted([command])

    @rule(user=st.sampled_from(USERS), size=st.integers(1, 6))
    def submit_batch(self, user: str, size: int) -> None:
        commands = [self._new_command(user, ["lc", "spec"], False) for _ in range(size)]
        batch = Batch(user, id=f"{(1 << 120) + self.next_job:032x}")  # apart from the commands' ids
        submission.enqueue_batch(RuntimeView(self.parts), batch, commands)  # type: ignore[arg-type]
        self._accepted(commands)

    def _accepted(self, commands: list[CancelCommand]) -> None:
        for command in commands:
            # I6: accepted means it exists, queued, whatever the broker said.
            assert self.parts.registry.state_of(command.id) == QUEUED
            self.commands[command.id] = command.job_id
            if command.callback_url:
                self.with_callback.add(command.id)

    @precondition(lambda self: self.commands)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        command_id = data.draw(st.sampled_from(list(self.commands)))
        command = self.parts.registry.get(command_id)
        assert command is not None
        outcome = lifecycle.withdraw(RuntimeView(self.parts), command)  # type: ignore[arg-type]
        assert outcome.moved == (command.state == QUEUED) or command.state == QUEUED

    # -- turns -------------------------------------------------------------------------------
    def _run_turn(self, parts: Parts, script: list[str], client: ModelClient | None = None) -> RunResult | None:
        """One delivery of a turn, as `ukcancel.run_next` runs it."""
        self.turn += 1
        holder = f"turn-{self.turn}"
        client = client or ModelClient(self.ukssdc, holder, script)
        sent_before = self.broker.sent
        try:
            result = CancellationRun(parts, holder, parts.gate, client).run()  # type: ignore[arg-type]
            if result.command_id is not None:
                parts.schedule.continue_lane()
            elif result.waited:
                # I5: a turn that found no permit sends no successor.
                assert self.broker.sent == sent_before
            return result
        except (redis.RedisError, DispatchError):
            return None
        finally:
            self._note_requests(holder)

    @precondition(lambda self: self.broker.turns > 0)
    @rule(script=st.lists(st.sampled_from(OUTCOMES), max_size=3))
    def deliver_turn(self, script: list[str]) -> None:
        self.broker.turns -= 1
        self._run_turn(self.parts, script)

    @precondition(lambda self: self.broker.turns > 0)
    @rule(at=st.integers(1, 14), kind=st.sampled_from(["die", "die_after", "error"]),
          script=st.lists(st.sampled_from(OUTCOMES), max_size=2), redelivered=st.booleans())
    def deliver_turn_with_a_fault(self, at: int, kind: str, script: list[str], redelivered: bool) -> None:
        self.broker.turns -= 1
        plan = FaultPlan(at, kind)
        parts = Parts.on(fault_connection(self.server, plan), self.clock, self.broker)
        try:
            self._run_turn(parts, script)
        except WorkerDied:
            if redelivered:  # acks_late + reject_on_worker_lost: the message comes back
                self.broker.turns += 1

    @precondition(lambda self: self.broker.turns > 0 and len(self.frozen) < 2)
    @rule()
    def freeze_a_worker_in_its_call(self) -> None:
        """A worker stopped (SIGSTOP, a stalled VM) in the middle of a UKSSDC call, past its lease."""
        self.broker.turns -= 1
        self.turn += 1
        holder = f"turn-{self.turn}"
        client = ModelClient(self.ukssdc, holder, ["freeze"])
        parts = Parts.on(fault_connection(self.server, None), self.clock, self.broker)
        thread = threading.Thread(target=self._frozen_turn, args=(parts, client), daemon=True)
        thread.start()
        while thread.is_alive() and not client.frozen.wait(0.005):
            pass
        self._note_requests(holder)
        if not client.frozen.is_set():  # it found nothing runnable, or no permit, and ended
            return
        self.frozen.append(Frozen(thread, client))

    def _frozen_turn(self, parts: Parts, client: ModelClient) -> None:
        with contextlib.suppress(redis.RedisError, DispatchError):
            CancellationRun(parts, client.run, parts.gate, client).run()  # type: ignore[arg-type]

    @precondition(lambda self: self.frozen)
    @rule()
    def thaw_a_frozen_worker(self) -> None:
        frozen = self.frozen.pop(0)
        frozen.client.thaw.set()
        frozen.thread.join(10)
        assert not frozen.thread.is_alive()
        self._note_requests(frozen.client.run)

    def _note_requests(self, run: str) -> None:
        """The jobs `run` has sent the UKSSDC a request for (I7 compares attempts with them)."""
        for call in self.ukssdc.calls:
            if call.run == run and call.job_id is not None:
                self.requesting_runs[call.job_id].add(run)

    # -- time, the reconciler, the fleet -------------------------------------------------------
    @rule(seconds=st.sampled_from([0.05, 0.3, 1.0, 2.5, 6.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def reconciler_tick(self) -> None:
        sent_before = self.broker.sent
        wait = self.parts.gate.next_permit_in()
        try:
            report = self.reconciler.tick()
        except DispatchError:
            return
        if wait.seconds > SETTINGS.fleet_max_wait_seconds:
            assert self.broker.sent == sent_before and report.sent == 0  # I5: the gate holds the lanes

    @rule(down=st.booleans())
    def broker_goes(self, down: bool) -> None:
        self.broker.down = down

    @rule(rate=st.sampled_from([MIN_FLEET_RATE_PER_SECOND, 0.2, 1.5, 5.0, 40.0]))
    def rate_changes(self, rate: float) -> None:
        self.parts.gate.configure(rate_per_second=rate)
        self.ukssdc.rate = rate

    @rule(seconds=st.sampled_from([1.0, 30.0]))
    def fleet_paused(self, seconds: float) -> None:
        self.parts.gate.pause(seconds)

    @rule()
    def a_turn_is_lost(self) -> None:
        """The broker lost a message (a restart, a purge)."""
        self.broker.turns = max(0, self.broker.turns - 1)

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def states_never_go_backwards(self) -> None:  # I3
        for command_id in self.commands:
            state = self.parts.registry.state_of(command_id)
            assert state is not None
            before = self.seen.get(command_id)
            if before is not None:
                assert RANK[state] >= RANK[before], (command_id, before, state)
                if before in TERMINAL:
                    assert state == before
            self.seen[command_id] = state

    @invariant()
    def one_result_entry_per_terminal_command(self) -> None:  # I2
        entries = [fields[b"command_id"].decode() for _, fields in self.parts.connection.xrange(keys.RESULTS_STREAM)]
        assert len(entries) == len(set(entries)), "a command has two results entries"
        terminal = {c for c in self.commands if self.parts.registry.state_of(c) in TERMINAL}
        assert set(entries) == terminal

    @invariant()
    def a_callback_is_pending_exactly_while_it_is_in_the_outbox(self) -> None:  # I2
        outbox = {m.decode() for m in self.parts.connection.zrange(keys.CALLBACK_OUTBOX, 0, -1)}
        for command_id in self.with_callback:
            command = self.parts.registry.get(command_id)
            assert command is not None
            pending = command.callback is not None and command.callback.get("status") == PENDING
            assert pending == (command_id in outbox), (command_id, command.callback)
            if command.terminal:
                assert command.callback is not None

    @invariant()
    def no_window_over_the_limit(self) -> None:  # I4
        times = sorted((call.at, call.rate) for call in self.ukssdc.calls)
        for index, (at, rate) in enumerate(times):
            calls, window = rate_window(rate)
            window += SETTINGS.fleet_guard_seconds
            earlier = [t for t, _ in times[:index] if t > at - window + 1e-9]
            assert len(earlier) < calls, f"{len(earlier) + 1} calls within {window:.3f} s at rate {rate}"

    @invariant()
    def attempts_only_for_requests_sent(self) -> None:  # I7
        for command_id, job_id in self.commands.items():
            command = self.parts.registry.get(command_id)
            assert command is not None
            assert command.attempts <= len(self.requesting_runs[job_id]), (command.attempts, job_id)

    # -- faults stop: everything ends -------------------------------------------------------------
    def teardown(self) -> None:
        if not hasattr(self, "redis_time"):
            return
        with self.redis_time:  # the wall clock is fakeredis's again however the drain ends
            if hasattr(self, "broker_sent_before"):  # `start` ran to its end
                self._drain()

    def _drain(self) -> None:
        for frozen in self.frozen:
            frozen.client.thaw.set()
            frozen.thread.join(10)
        self.broker.down = False
        self.parts.gate.configure(rate_per_second=SETTINGS.fleet_rate_per_second)
        self.ukssdc.rate = SETTINGS.fleet_rate_per_second
        deadline = self.clock.now + 600.0  # bounded simulated time
        while self.clock.now < deadline and not self._all_terminal():
            self.reconciler.tick()
            for _ in range(self.broker.turns):
                self.broker.turns -= 1
                self._run_turn(self.parts, [])
            self.clock.now += SETTINGS.reconcile_seconds
        assert self._all_terminal(), {c: self.parts.registry.state_of(c) for c in self.commands}  # I1
        self.states_never_go_backwards()
        self.one_result_entry_per_terminal_command()
        for _ in range(10):  # the outbox drains once every command ended
            self.reconciler.tick()
            self.clock.now += 31
        self.a_callback_is_pending_exactly_while_it_is_in_the_outbox()
        assert not self.parts.connection.zcard(keys.CALLBACK_OUTBOX)
        self._tuples_agree_with_the_server()

    def _all_terminal(self) -> bool:
        return all(self.parts.registry.state_of(c) in TERMINAL for c in self.commands)

    def _tuples_agree_with_the_server(self) -> None:
        for command_id, job_id in self.commands.items():
            command = self.parts.registry.get(command_id)
            assert command is not None and command.result is not None or command.state == ABORTED
            if command.state != COMPLETED:
                continue
            status, detail = command.result
            if status in (1, 2):
                states = self.ukssdc.states[job_id]
                short_of = {v: k for k, v in LONG.items()}
                for long_name, outcome in detail.items():
                    server_state = states[short_of[long_name]]
                    if outcome["code"] == 0:
                        assert server_state == -4, (command_id, long_name, outcome, server_state)
                    elif outcome["code"] == 1:
                        assert server_state not in (1, 2, 3, 5), (command_id, long_name, outcome, server_state)
                assert (status == 1) == all(o["code"] == 0 for o in detail.values())


DispatchModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=int(os.environ.get("UKCANCEL_MODEL_STEPS", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    phases=[Phase.explicit, Phase.reuse, Phase.generate] if os.environ.get("UKCANCEL_MODEL_NO_SHRINK") else tuple(Phase),
)
TestDispatchModel = DispatchModel.TestCase

