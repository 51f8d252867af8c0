"""One hostile UKSSDC reply against real worker processes: a 503 with an absurd Retry-After (1,000
days, 30 digits, a date in the year 9999) pauses nobody, and the command still completes."""

from __future__ import annotations

import pytest
from processes import wait_for

from ukcancel.command import CancelCommand
from ukcancel.runtime import Runtime
from ukcancel.simulator import Fault, SimulatorServer

CANCEL = "canceljob.php"


@pytest.mark.parametrize("retry_after", ["86400000", "9" * 30, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_an_absurd_retry_after_pauses_nobody_and_the_command_completes(
    redis_url: str, simulator: SimulatorServer, api_runtime: Runtime, worker_factory, make_worker_env, retry_after: str
) -> None:
    simulator.state.add_faults(Fault("http503", retry_after=retry_after))
    worker_factory(make_worker_env(redis_url, simulator), concurrency=2, name="hostile1")
    command = CancelCommand(job_id=2001, user_id="bulk@example.org", products=["LightCurve"])
    api_runtime.schedule.enqueue([command])

    done = wait_for(lambda: (found := api_runtime.registry.get(command.id)) is not None and found.terminal and found,
                    30, "the command to complete")
    assert done.state == "completed" and done.result is not None and done.result[0] == 1, done.result
    assert api_runtime.gate.paused_for() == 0
    statuses = [entry["status"] for entry in simulator.state.log() if entry["endpoint"] == CANCEL]
    assert statuses == [503, 200]
