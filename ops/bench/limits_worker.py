"""`ukcancel worker` with the `limits` library's moving window in place of the gate's own window.

Benchmark 2 runs it beside the shipped worker to show why the fleet gate keeps its own sliding
window: `limits` (the maintained library the project would otherwise use) counts whole-second
windows at permit time, with no pacing and no guard interval, and the UKSSDC sees more than the
limit in some one-second windows. Everything else (in-flight cap, pause, breaker) is unchanged.

    python ops/bench/limits_worker.py worker --pool=prefork --concurrency=8
"""

from __future__ import annotations

import sys
import time
from typing import Any

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from ukcancel import fleet as rate_limit


def use_limits_moving_window() -> None:
    original_init = rate_limit.FleetGate.__init__

    def init(self: rate_limit.FleetGate, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        limiter = MovingWindowRateLimiter(RedisStorage("redis://", connection_pool=self.connection.connection_pool))
        gate_script = self._acquire
        rate = self.settings.fleet_rate_per_second

        def acquire(keys: list[str], args: list[Any]) -> list[Any]:
            # The gate's script with its own window and pacing out of the way (a rate it never
            # reaches; the benchmark sets the rate by settings, so no run-time override stands in
            # the way), and the `limits` moving window in front of it for permits.
            if args[1]:  # a permit is asked for (an empty id only looks)
                item = RateLimitItemPerSecond(max(1, int(rate)), max(1, round(1 / min(rate, 1.0))))
                if not limiter.hit(item, "bench"):
                    reset_at = limiter.get_window_stats(item, "bench").reset_time
                    return [0, repr(max(0.001, reset_at - time.time())), "rate"]
            return gate_script(keys=keys, args=[*args[:3], repr(1e9), *args[4:]])

        self._acquire = acquire  # type: ignore[assignment]
        self.stamp = lambda permit: None  # type: ignore[method-assign]  # `limits` cannot re-time a hit

    rate_limit.FleetGate.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    use_limits_moving_window()
    from ukcancel.cli import main

    sys.argv[0] = "ukcancel"
    main()
