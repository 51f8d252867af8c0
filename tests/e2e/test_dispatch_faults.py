"""Dispatch faults with real processes: a frozen worker, and what a waiting fleet costs.

Real `ukcancel worker` processes, a redis-server of the test's own (its command counters are the
measure), the simulator over HTTP. The same promises are checked on fakeredis by
`tests/unit/test_dispatch_regressions.py` and, over random interleavings, by the model in
`tests/unit/test_dispatch_model.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from processes import free_port, redis_server_argv, wait_for

from ukcancel import keys
from ukcancel.command import CancelCommand
from ukcancel.fleet import FleetGate
from ukcancel.outcome import CONFIRMED_CANCELLED_TEXT
from ukcancel.runtime import Runtime
from ukcancel.schedule import Schedule
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer

pytestmark = pytest.mark.e2e

ASTRO = "astro@example.org"


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A redis-server for this test alone: its INFO counters count only this test's fleet."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(redis_server_argv(binary, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_for(lambda: _answers(client), 15, "redis-server to start")
    yield url
    process.kill()
    process.wait(15)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def runtime_for(env: dict[str, str]) -> Runtime:
    from ukcancel.assemble import create_runtime

    return create_runtime(Settings.from_env(env))


def cancels(simulator: SimulatorServer) -> list[dict[str, Any]]:
    return [entry for entry in simulator.state.log() if entry["endpoint"] == "canceljob.php"]


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (clock ticks of /proc/PID/stat)."""
    total = 0.0
    for member in [pid, *children_of(pid)]:
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def test_a_command_whose_frozen_caller_and_heir_both_time_out_completes_with_the_right_tuple(
    redis_url: str, simulator: SimulatorServer, worker_factory: Any, make_worker_env: Any
) -> None:
    """The stranding of the issue: the pool child making the call is frozen (SIGSTOP) past its
    lease, another worker takes the command over, and both calls time out. It used to stay
    `retrying` on no list for good; every step that leaves `running` now checks the lease holder."""
    env = make_worker_env(redis_url, simulator, UKCANCEL_LEASE_SECONDS="2", UKCANCEL_UKSSDC_TIMEOUT_SECONDS="1")
    runtime = runtime_for(env)
    # Both calls are held 3 s by the server (which still cancels), so each caller times out at 1 s.
    simulator.state.add_faults(Fault("read_timeout_after_processing", count=2, seconds=3))
    frozen = worker_factory(env, pool="prefork", concurrency=1, name="frozen")
    command = CancelCommand(job_id=1001, user_id=ASTRO, products=["LightCurve"])
    runtime.schedule.enqueue([command])
    wait_for(lambda: cancels(simulator), 20, "the first call to be in flight")
    [child] = children_of(frozen.process.pid)
    os.kill(child, signal.SIGSTOP)
    try:
        worker_factory(env, pool="prefork", concurrency=2, name="heir")
        wait_for(lambda: len(cancels(simulator)) >= 2, 30, "the heir's call after the lease lapsed")
        time.sleep(1.5)  # the heir's call times out too
    finally:
        os.kill(child, signal.SIGCONT)  # the frozen call times out now, as a run that lost its lease

    done = runtime.registry.wait_terminal(command.id, 60)
    assert done is not None and done.state == "completed", done
    assert done.result == [1, {"LightCurve": {"code": 0, "text": CONFIRMED_CANCELLED_TEXT}}]
    states = [entry["state"] for entry in done.history]
    assert states.count("completed") == 1 and "retrying" in states
    assert simulator.state.product_state(1001, "lc") == -4
    connection = redis.Redis.from_url(redis_url)
    assert len(connection.xrange(keys.RESULTS_STREAM)) == 1
    time.sleep(1.5)  # the thawed run has ended: it changed nothing
    assert runtime.registry.get(command.id).history == done.history  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["rate 0.2/s", "paused"])
def test_a_waiting_fleet_costs_about_what_an_idle_one_does(
    own_redis: str, simulator: SimulatorServer, worker_factory: Any, make_worker_env: Any, how: str
) -> None:
    """It used to spin: at 0.2/s with 10 waiting, 7,037 Redis commands/s and 0.78 cores of workers."""
    env = make_worker_env(own_redis, simulator, UKCANCEL_FLEET_RATE_PER_SECOND="50")
    client = redis.Redis.from_url(own_redis)
    workers = [worker_factory(env, concurrency=4, name=f"w{n}") for n in (1, 2)]
    seconds = 8.0

    def measure() -> tuple[float, float]:
        commands, cpu, started = commands_processed(client), sum(cpu_seconds(w.process.pid) for w in workers), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        return ((commands_processed(client) - commands) / elapsed,
                (sum(cpu_seconds(w.process.pid) for w in workers) - cpu) / elapsed)

    time.sleep(2)  # past start-up
    idle_commands, idle_cpu = measure()

    settings = Settings.from_env(env)
    gate = FleetGate(client, settings)
    schedule = Schedule(client, runtime_for(env).registry, lambda n: None)  # no turns from here: the fleet's own
    if how == "paused":
        gate.pause(600)
    else:
        gate.configure(rate_per_second=0.2)
    commands = [CancelCommand(job_id=1001 + n % 3, user_id=ASTRO, products=["LightCurve"]) for n in range(10)]
    schedule.enqueue(commands)
    time.sleep(2)
    before = client.info("commandstats")
    waiting_commands, waiting_cpu = measure()
    after = client.info("commandstats")
    if os.environ.get("UKCANCEL_DEBUG_COMMANDSTATS"):
        print({k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after
               if after[k]["calls"] - before.get(k, {"calls": 0})["calls"] > 10})

    print(f"{how}: Redis commands/s idle {idle_commands:.0f}, waiting {waiting_commands:.0f}; "
          f"worker CPU idle {idle_cpu:.3f} cores, waiting {waiting_cpu:.3f} cores")
    calls = len(cancels(simulator))
    if how == "paused":
        assert calls == 0
    else:  # 0.2/s: about two in 12 s (and never more than the rate allows)
        assert calls <= 4
    # Within a small constant of idle (Redis counts the commands a script runs too): the reconciler's
    # scripts twice a second, and one turn's when a permit is near. The busy loop made 7,037 a second.
    assert waiting_commands <= idle_commands + 100, (idle_commands, waiting_commands)
    assert waiting_cpu <= idle_cpu + 0.15, (idle_cpu, waiting_cpu)
