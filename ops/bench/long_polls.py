"""Benchmark 7: 1,000 concurrent long polls on one API host of 2 gunicorn workers.

Every waiter is `GET /v1/cancellations/{id}?wait=N` on a command of its own; once all are
waiting, the commands are completed (their terminal transition, as a worker makes it) and each
waiter's answer is timed from its command's completion. The shipped server (gevent workers, one
pub/sub listener per process) runs beside the one it replaced (gthread, 16 threads per worker).
The client is asyncio with one socket per waiter: it only holds connections and reads answers.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from typing import Any

from harness import USER_API, Context, child_env, fmt, group_pids, verdict
from http_enqueue import Served

SERVERS = {
    "gevent (shipped)": ["--workers", "2", "--worker-class", "gevent", "--worker-connections", "2000",
                         "--timeout", "90"],
    "gthread 2 x 16 (before)": ["--workers", "2", "--worker-class", "gthread", "--threads", "16", "--timeout", "90"],
}
WAIT_S = 20
ANSWER_GOAL_S = 1.0


async def _wait_one(port: int, token: str, command_id: str, ready: list[int], timeout: float) -> float | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    request = (f"GET /v1/cancellations/{command_id}?wait={WAIT_S} HTTP/1.1\r\nHost: bench\r\n"
               f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n")
    writer.write(request.encode())
    await writer.drain()
    ready.append(1)
    try:
        answer = await asyncio.wait_for(reader.read(), timeout)
        at = time.time()
        # Only a 200 that shows the command completed counts as answered.
        return at if answer.startswith(b"HTTP/1.1 200") and b'"state":"completed"' in answer else None
    except (asyncio.TimeoutError, OSError):
        return None
    finally:
        writer.close()


def _rss_bytes(pgid: int) -> int:
    import psutil

    total = 0
    for pid in group_pids(pgid):
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def _run(ctx: Context, label: str, args: list[str], n: int) -> dict[str, Any]:
    from ukcancel.command import CancelCommand

    store = ctx.store
    store.reset()
    token = store.token(USER_API, "bench-longpoll")  # after the reset, which deletes tokens too
    # One user's 1,000 waits: the API's rate limit and the per-user cap on long polls raised to fit
    # (the benchmark measures how many one host can hold, not the quota, which would refuse 990).
    env = child_env(REDIS_URL=store.url, UKCANCEL_API_RATE_LIMIT="100000000 per minute",
                    UKCANCEL_QUOTA_LONG_POLLS=str(2 * n))
    served = Served(ctx, "longpoll-" + label.split()[0], "ukcancel.wsgi:app", env, args)
    registry = store.runtime.registry
    commands = [CancelCommand(job_id=700_000 + i, user_id=USER_API, products=["LightCurve"]) for i in range(n)]
    pipe = store.redis.pipeline(transaction=False)
    for command in commands:
        registry.add(command, pipe)
    pipe.execute()
    rss_idle = _rss_bytes(served.child.pgid)
    ready: list[int] = []
    out: dict[str, Any] = {"server": label, "waiters": n}
    try:
        async def main() -> list[float | None]:
            tasks = [asyncio.create_task(_wait_one(served.port, token, c.id, ready, WAIT_S + 15)) for c in commands]
            await asyncio.sleep(0)
            while len(ready) < n:  # every request sent
                await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)  # let the server take them all in
            out["rss_waiting"] = _rss_bytes(served.child.pgid)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _complete_all)
            return await asyncio.gather(*tasks)

        def _complete_all() -> None:
            for command in commands:
                registry.complete(command.id, [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}])

        answered = asyncio.run(main())
    finally:
        served.stop()
    completed = {c.id: registry.get(c.id) for c in commands}
    delays = [at - completed[c.id].updated_at for c, at in zip(commands, answered)
              if at is not None and completed[c.id] is not None]
    out["answered"] = len(delays)
    out["within_goal"] = sum(1 for d in delays if d <= ANSWER_GOAL_S)
    out["delay_median_s"] = statistics.median(delays) if delays else None
    out["delay_max_s"] = max(delays) if delays else None
    out["memory_per_waiter_kib"] = max(0, out["rss_waiting"] - rss_idle) / n / 1024
    store.reset()
    return out


def bench_long_polls(ctx: Context) -> dict[str, Any]:
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * n)), hard))
    runs = [_run(ctx, label, args, n) for label, args in SERVERS.items()]
    ctx.out.table(
        f"Benchmark 7: {n:,} concurrent long polls (?wait={WAIT_S}) on one API host of 2 workers",
        ["server", "answered", f"within {ANSWER_GOAL_S:g} s of completion", "median delay s", "worst delay s",
         "memory per waiter KiB"],
        [[r["server"], f"{r['answered']:,} / {n:,}", f"{r['within_goal']:,}",
          fmt(r["delay_median_s"], 3) if r["delay_median_s"] is not None else "-",
          fmt(r["delay_max_s"], 2) if r["delay_max_s"] is not None else "-",
          fmt(r["memory_per_waiter_kib"], 1)] for r in runs],
        caption="Delay: from the command's completion (its record's updated_at) to its waiter's answer.",
    )
    shipped = runs[0]
    ok = shipped["within_goal"] == n
    ctx.summary.append(["7", f"{n:,} long polls answered within {ANSWER_GOAL_S:g} s of completion",
                        f"{shipped['within_goal']:,} / {n:,}", f"{n:,}", verdict(ok)])
    return {"runs": runs}
