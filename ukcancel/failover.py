"""The UKSSDC rate limit through a Redis failover.

Redis replicates asynchronously: the replica Sentinel promotes may lack the last permits the lost
master granted (``ukcancel:fleet:calls``), so its sliding window could let a second's worth of
calls through on top of calls already made. `MasterWatch` closes that gap from outside the gate:
when a process meets a master it has not seen (a new `run_id`), it pauses the whole fleet
(`FleetGate.pause`) for one rate window before anything else, then records the master's run_id in
``ukcancel:master:run_id``. Every process checks on its first connection to a new master (the
store tells it, `ukcancel.store.master_watchers`) and periodically (`check`), and pauses before it
records, so no process takes a permit from a new master before the pause is in place.
"""

from __future__ import annotations

import logging

import redis

from ukcancel import keys
from ukcancel.fleet import FleetGate
from ukcancel.store import as_text, master_watchers

log = logging.getLogger(__name__)


def pause_window_seconds(rate_per_second: float, guard_seconds: float) -> float:
    """One window of the gate: the sliding second, or the spacing of calls when it is longer, plus the guard."""
    return max(1.0, 1.0 / rate_per_second) + guard_seconds


class MasterWatch:
    """Pauses the fleet gate for one window whenever the Redis master changes.

    Redis keys: ``ukcancel:master:run_id`` (read and set), and through `FleetGate.pause`
    ``ukcancel:fleet:paused_until`` (see `ukcancel.keys`).
    """

    def __init__(self, connection: redis.Redis, gate: FleetGate, guard_seconds: float = 0.04) -> None:
        self.connection = connection
        self.gate = gate
        self.guard_seconds = guard_seconds
        self._attached = False

    def attach(self) -> MasterWatch:
        """Be told by the store of every new master this process connects to (Sentinel clients)."""
        watchers = master_watchers(self.connection)
        if watchers is not None and not self._attached:
            watchers.append(self.on_master)
            self._attached = True
        return self

    def check(self) -> bool:
        """Compare the master the connection reaches now with the recorded one; True if it paused."""
        run_id = self.connection.info("server").get("run_id")
        return self.on_master(str(run_id)) if run_id else False

    def on_master(self, run_id: str) -> bool:
        recorded = self.connection.get(keys.MASTER_RUN_ID)
        if recorded is not None and as_text(recorded) == run_id:
            return False
        window = pause_window_seconds(self.gate.limits().rate_per_second, self.guard_seconds)
        self.gate.pause(window)
        self.connection.set(keys.MASTER_RUN_ID, run_id)
        if recorded is not None:
            log.warning("Redis master changed (now run_id %s): UKSSDC calls paused for %.2f s", run_id, window)
        return True
