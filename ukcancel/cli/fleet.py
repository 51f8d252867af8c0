"""`ukcancel fleet`: show, and change at run time, the limits every worker keeps toward the UKSSDC."""

from __future__ import annotations

import json

import click

from ukcancel.cli.config import load_settings
from ukcancel.settings import MIN_FLEET_RATE_PER_SECOND


@click.command()
@click.option("--rate", type=click.FloatRange(min=MIN_FLEET_RATE_PER_SECOND, max=1000), default=None,
              help="UKSSDC calls per second for the whole fleet (e.g. 2, or 0.5 for one every 2 s; "
                   f"at least {MIN_FLEET_RATE_PER_SECOND}).")
@click.option("--in-flight", type=click.IntRange(min=1, max=1000), default=None,
              help="UKSSDC calls the whole fleet may have open at once.")
@click.option("--resume", is_flag=True,
              help="Lift a fleet pause (a UKSSDC Retry-After) now: workers call the UKSSDC again at once.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fleet(rate: float | None, in_flight: int | None, resume: bool, as_json: bool) -> None:
    """Show the fleet's rate limit, in-flight cap, breaker and pause; --rate/--in-flight change them.

    A change is stored in Redis and taken up by every worker at its next UKSSDC call, without a
    restart; it outlives the settings UKCANCEL_FLEET_RATE_PER_SECOND / _MAX_IN_FLIGHT. --resume
    lifts a pause the UKSSDC asked for with Retry-After (at most UKCANCEL_RETRY_AFTER_MAX_SECONDS).
    """
    settings = load_settings()
    if settings.embedded:
        raise click.UsageError("fleet needs REDIS_URL: an embedded store lives only inside one process")
    from ukcancel import presence
    from ukcancel.fleet import FleetGate
    from ukcancel.store import connect_redis

    connection = connect_redis(settings)
    gate = FleetGate(connection, settings)
    lifted = gate.resume() if resume else None
    if rate is not None or in_flight is not None:
        gate.configure(rate, in_flight)
    state = {**gate.status(), "processes": presence.report(connection)}
    if lifted is not None:
        state["resumed_seconds"] = round(lifted, 1)
    if as_json:
        click.echo(json.dumps(state))
        return
    if lifted is not None:
        click.echo(f"resumed:         pause lifted ({lifted:.1f} s were left)" if lifted else "resumed:         no pause to lift")
    click.echo(f"rate limit:      {state['rate_per_second']:g} calls/s (fleet-wide)")
    click.echo(f"in-flight cap:   {state['max_in_flight']} (now {state['in_flight']})")
    click.echo(f"paused:          {state['paused_seconds']:g} s left" if state["paused_seconds"] else "paused:          no")
    retry = f", probe in {state['breaker_retry_in_seconds']:g} s" if state["breaker"] == "open" else ""
    click.echo(f"circuit breaker: {state['breaker']} ({state['breaker_failures']} consecutive failures{retry})")
    processes = state["processes"]
    counts = processes["counts"]
    click.echo(f"processes:       {counts['api']} API, {counts['worker']} worker, "
               f"{counts['stream-consumer']} stream consumer" + ("" if counts["stream-consumer"] == 1 else "s"))
    for process in processes["processes"]:
        click.echo(f"  {process['role']:<16}{process['name']}  (version {process['version']})")
    for problem in processes["problems"]:
        click.echo(f"WARNING: {problem}")
