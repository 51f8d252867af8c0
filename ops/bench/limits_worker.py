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

        def take_rate(keys: list[str], args: list[Any]) -> str:
            # args as the gate passes them: now, permit id, calls, window + guard, interval.
            item = RateLimitItemPerSecond(int(args[2]), max(1, round(float(args[3]) - self.settings.fleet_guard_seconds)))
            if limiter.hit(item, "bench"):
                return "-1"
            reset_at = limiter.get_window_stats(item, "bench").reset_time
            return repr(max(0.001, reset_at - time.time()))

        self._take_rate = take_rate  # type: ignore[method-assign]
        self.stamp = lambda permit: None  # type: ignore[method-assign]  # `limits` cannot re-time a hit

    rate_limit.FleetGate.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    use_limits_moving_window()
    from ukcancel.cli import main

    sys.argv[0] = "ukcancel"
    main()
