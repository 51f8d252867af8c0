"""A fleet pause set by one hostile UKSSDC reply is visible (/readyz, `ukcancel fleet`, metrics) and
liftable (`ukcancel fleet --resume`). Real Redis, a real hostile server."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from ukcancel.assemble import create_api, create_runtime
from ukcancel.cli import main
from ukcancel.fleet import record_heartbeat
from ukcancel.settings import Settings


def test_a_pause_is_degraded_in_readyz_shown_and_lifted_by_the_cli(redis_url: str) -> None:
    runtime = create_runtime(Settings(redis_url=redis_url))
    client = create_api(runtime=runtime).test_client()
    record_heartbeat(runtime.connection, "w1@host")
    assert client.get("/readyz").get_json()["status"] == "ok"
    runtime.gate.pause(900)  # the longest Retry-After honoured by default

    ready = client.get("/readyz")
    assert ready.status_code == 200  # still serving: a load balancer must not take the API away
    body = ready.get_json()
    assert body["status"] == "degraded" and 890 < body["checks"]["fleet_paused_seconds"] <= 900

    runner = CliRunner()
    env = {"REDIS_URL": redis_url}
    shown = runner.invoke(main, ["fleet"], env=env)
    assert shown.exit_code == 0 and re.search(r"paused: +(89\d(\.\d)?|900) s left", shown.output)
    lifted = runner.invoke(main, ["fleet", "--resume", "--json"], env=env)
    assert lifted.exit_code == 0, lifted.output
    state = json.loads(lifted.output)
    assert state["paused_seconds"] == 0 and 890 < state["resumed_seconds"] <= 900
    assert runtime.gate.paused_for() == 0
    after = client.get("/readyz").get_json()
    assert after["status"] == "ok"
    assert {name: after["checks"][name] for name in ("redis", "workers", "ukssdc_breaker", "fleet_paused_seconds")} == {
        "redis": "ok", "workers": 1, "ukssdc_breaker": "closed", "fleet_paused_seconds": 0}
    again = runner.invoke(main, ["fleet", "--resume"], env=env)
    assert "no pause to lift" in again.output
