"""Settings that agree: every process publishes its version and shared settings with its heartbeat,
and `/readyz`, `ukcancel fleet` and the console show where live processes disagree and whether a
stream consumer is live. Real Redis, a real worker process, an in-process API and stream consumer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner
from processes import wait_for

from ukcancel import keys, presence
from ukcancel.assemble import create_api, create_runtime
from ukcancel.cli import main
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.stream import CommandStreamConsumer

ALLOWED = "127.0.0.1:9"


def readyz(app: Any) -> dict[str, Any]:
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_setting_set_for_the_api_but_not_the_worker_is_shown_everywhere(
    redis_url: str, simulator: SimulatorServer, worker_factory: Any, make_worker_env: Callable[..., dict[str, str]],
) -> None:
    # The case: UKCANCEL_CALLBACK_ALLOWED_HOSTS given to the API only.
    environment = make_worker_env(redis_url, simulator)
    worker = worker_factory(environment, name="w1")
    settings = Settings.from_env({**environment, "UKCANCEL_CALLBACK_ALLOWED_HOSTS": ALLOWED})
    runtime = create_runtime(settings)
    app = create_api(runtime=runtime)
    wait_for(lambda: any(p.role == "worker" for p in presence.live_processes(runtime.connection)), 20,
             "the worker's presence")

    body = readyz(app)
    assert body["checks"]["stream_consumers"] == "no live stream consumer"
    hosts = body["checks"]["settings"]["UKCANCEL_CALLBACK_ALLOWED_HOSTS"]
    assert hosts[ALLOWED] == [app.extensions["ukcancel_presence"].name]
    assert hosts[""] == ["worker:w1@" + hosts[""][0].split("@", 1)[1]]
    assert any(p.startswith("UKCANCEL_CALLBACK_ALLOWED_HOSTS differs between processes") for p in body["problems"])
    assert any(p.startswith("no live stream consumer") for p in body["problems"])

    # A stream consumer with the worker's settings: live, and one more process on the worker's side.
    with CommandStreamConsumer(create_runtime(settings.replace(callback_allowed_hosts=())), "c1",
                               block_ms=200).running():
        wait_for(lambda: readyz(app)["checks"]["stream_consumers"] == 1, 20, "the stream consumer's presence")
        body = readyz(app)
        assert sorted(body["checks"]["settings"]["UKCANCEL_CALLBACK_ALLOWED_HOSTS"][""]) == sorted(
            [hosts[""][0], "stream-consumer:c1"])
        assert not any(p.startswith("no live stream consumer") for p in body["problems"])

        result = CliRunner().invoke(main, ["fleet"], env={"REDIS_URL": redis_url})
        assert result.exit_code == 0, result.output
        assert "processes:       1 API, 1 worker, 1 stream consumer" in result.output
        assert "WARNING: UKCANCEL_CALLBACK_ALLOWED_HOSTS differs between processes" in result.output
        as_json = json.loads(CliRunner().invoke(main, ["fleet", "--json"], env={"REDIS_URL": redis_url}).output)
        assert set(as_json["processes"]["disagreements"]) == {"UKCANCEL_CALLBACK_ALLOWED_HOSTS"}

    # Stopped cleanly, the consumer leaves at once; so does the worker.
    assert readyz(app)["checks"]["stream_consumers"] == "no live stream consumer"
    worker.stop()
    assert [p.role for p in presence.live_processes(runtime.connection)] == ["api"]


def test_agreeing_processes_report_no_problem_and_secrets_are_only_hashed(redis_url: str) -> None:
    secret_broker = f"{redis_url.rsplit('/', 1)[0].replace('redis://', 'redis://:hunter2-broker@')}/0"
    settings = Settings(redis_url=redis_url, broker_url=secret_broker, console_secret="c" * 40)
    runtime = create_runtime(Settings(redis_url=redis_url))
    for name, role in (("api@h:1", presence.API), ("worker:w@h", presence.WORKER),
                       ("stream-consumer:c", presence.STREAM_CONSUMER)):
        presence.publish(runtime.connection, name, role, settings)
    stored = json.dumps({k.decode(): v.decode() for k, v in runtime.connection.hgetall(keys.PROCESSES_INFO).items()})
    assert "hunter2-broker" not in stored and "c" * 40 not in stored
    assert presence.digest(secret_broker) in stored
    report = presence.report(runtime.connection)
    assert report["problems"] == [] and report["disagreements"] == {}
    assert report["counts"] == {"api": 1, "worker": 1, "stream-consumer": 1}


def test_every_setting_says_which_process_reads_it() -> None:
    assert sorted(presence.READERS) == sorted(variable for variable, _, _ in Settings.ENVIRONMENT)


def test_an_api_process_that_serves_no_request_is_still_live(redis_url: str) -> None:
    """gunicorn's second worker may serve nothing while the first takes every connection: its
    presence comes from its own beat (`ukcancel.wsgi` starts it), not from requests."""
    runtime = create_runtime(Settings(redis_url=redis_url))
    app = create_api(runtime=runtime)
    publisher = app.extensions["ukcancel_presence"]
    assert presence.live_processes(runtime.connection) == []
    beating = publisher.start_beating()
    try:
        wait_for(lambda: [p.name for p in presence.live_processes(runtime.connection)] == [publisher.name], 10,
                 "the API's presence without a request")
        assert publisher.start_beating() is beating  # one beat a process
    finally:
        publisher.stop_beating()
    assert not beating.is_alive()
