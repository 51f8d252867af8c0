"""Benchmark 9: what a fleet that waits costs, beside an idle one (the dispatch invariant I5).

A 2-worker fleet (prefork, 8 slots each) on a redis-server of this benchmark's own, so its INFO
counters count this fleet only. Three states, each measured over the same window:

- idle: nothing waiting;
- paused: the fleet paused (a Retry-After) with 1,000 commands waiting;
- slow: the fleet rate set to 0.2 calls/s with 1,000 commands waiting.

Per state: Redis commands per second (Redis counts the commands a Lua script runs too), broker
messages per second (turns published: LPUSH on the Redis broker), log lines per second of the
workers, and the workers' CPU in cores. The busy loop this replaced: 7,037 Redis commands/s and
0.78 cores at 0.2 calls/s with 10 waiting.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from harness import Context, fmt, group_cpu_seconds, private_redis, start_workers, verdict

from ukcancel.command import CancelCommand, CommandRegistry
from ukcancel.fleet import FleetGate
from ukcancel.schedule import Schedule
from ukcancel.settings import Settings

WAITING = 1000
SLOW_RATE = 0.2
GOAL_EXTRA_COMMANDS = 100.0  # Redis commands/s over idle, at most
GOAL_EXTRA_CORES = 0.15


def _counters(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats")
    return int(client.info("stats")["total_commands_processed"]), int(stats.get("cmdstat_lpush", {}).get("calls", 0))


def _log_lines(workers: list[Any]) -> int:
    return sum(len(worker.log().splitlines()) for worker in workers)


def _measure(client: redis.Redis, workers: list[Any], seconds: float) -> dict[str, float]:
    commands, pushes = _counters(client)
    cpu = sum(group_cpu_seconds(worker.process.pid) for worker in workers)
    lines, began = _log_lines(workers), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    commands_after, pushes_after = _counters(client)
    return {
        "redis_commands_per_s": (commands_after - commands) / elapsed,
        "broker_messages_per_s": (pushes_after - pushes) / elapsed,
        "log_lines_per_s": (_log_lines(workers) - lines) / elapsed,
        "worker_cores": (sum(group_cpu_seconds(worker.process.pid) for worker in workers) - cpu) / elapsed,
    }


def bench_idle_cost(ctx: Context) -> dict[str, Any]:
    seconds = 10.0 if ctx.quick else 30.0
    private = private_redis(ctx.children, name="redis-idle-cost")
    if private is None:
        raise RuntimeError("redis-server is not installed")
    server, url = private
    sim = ctx.simulator()
    workers = start_workers(ctx.children, url, sim, 2, "idle", rate=50)
    client = redis.Redis.from_url(url)
    settings = Settings(redis_url=url, fleet_rate_per_second=50)
    gate = FleetGate(client, settings)
    schedule = Schedule(client, CommandRegistry(client, settings.result_ttl_seconds), lambda count: None)
    time.sleep(3)  # past start-up
    states: dict[str, dict[str, float]] = {"idle": _measure(client, workers, seconds)}

    gate.pause(3600)
    schedule.enqueue([CancelCommand(job_id=1001, user_id="bench@example.org", products=["LightCurve"])
                   for _ in range(WAITING)])  # no turn from here: the fleet's own reconciler decides
    time.sleep(2)
    states["paused"] = _measure(client, workers, seconds)

    gate.configure(rate_per_second=SLOW_RATE)
    sim.clear_log()
    gate.resume()
    time.sleep(2)
    states["slow"] = _measure(client, workers, seconds)
    calls = len([entry for entry in sim.log() if entry["endpoint"] == "canceljob.php"])

    idle = states["idle"]
    rows = [[name, fmt(s["redis_commands_per_s"], 0), fmt(s["broker_messages_per_s"], 2), fmt(s["log_lines_per_s"], 2),
             fmt(s["worker_cores"], 3)] for name, s in states.items()]
    ctx.out.table(
        f"Benchmark 9: a 2-worker fleet idle, paused with {WAITING:,} waiting, and at {SLOW_RATE}/s with "
        f"{WAITING:,} waiting ({seconds:g} s each)",
        ["state", "Redis commands/s", "broker messages/s", "log lines/s", "worker cores"], rows,
        caption=f"UKSSDC calls in the slow window: {calls} (at most {SLOW_RATE * seconds + 1:g} allowed)",
    )
    worst = max(states["paused"]["redis_commands_per_s"], states["slow"]["redis_commands_per_s"])
    worst_cores = max(states["paused"]["worker_cores"], states["slow"]["worker_cores"])
    ok = (worst <= idle["redis_commands_per_s"] + GOAL_EXTRA_COMMANDS
          and worst_cores <= idle["worker_cores"] + GOAL_EXTRA_CORES)
    ctx.summary.append(["9", "waiting fleet: Redis commands/s, cores (idle)",
                        f"{fmt(worst, 0)}, {fmt(worst_cores, 3)} ({fmt(idle['redis_commands_per_s'], 0)}, "
                        f"{fmt(idle['worker_cores'], 3)})",
                        f"<= idle + {GOAL_EXTRA_COMMANDS:g}, + {GOAL_EXTRA_CORES:g}", verdict(ok)])
    ctx.children.stop_many(workers)
    ctx.children.stop(server)
    return {"states": states, "slow_calls": calls, "seconds": seconds}
