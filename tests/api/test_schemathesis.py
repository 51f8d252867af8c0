"""schemathesis against the live API: real HTTP, a real Redis, a real worker and the UKSSDC simulator.

Every check (`--checks all`), every phase schemathesis runs here (examples, coverage, fuzzing,
stateful), bounded to about two minutes: 0 server errors, 0 conformance failures. The exceptions
below are by design, each with its reason; nothing else is excluded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
from werkzeug.serving import make_server

from ukcancel.assemble import create_api, create_runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
MAX_SECONDS = 100  # schemathesis' own budget (--max-time); the whole test stays near two minutes
SEED = 20261201  # a fixed seed: a failure here is the same failure on the next run
# Per request: above the slowest by-design answer (DELETE of a 10,000-item batch, below).
REQUEST_TIMEOUT = 60

# (operation filter, what is relaxed, why the API does this on purpose)
BY_DESIGN: list[tuple[dict[str, object], dict[str, object], str]] = [
    (
        {"include-path": "/v1/cancellations", "include-method": "GET"},
        {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}},
        "`cursor` is opaque: only a next_cursor this service issued loads (any other string is 422), "
        "which a schema cannot express short of publishing the cursor's format.",
    ),
    (
        {"include-path": "/v1/cancellations", "include-method": "POST"},
        {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}},
        "`callback_url` must name a host on UKCANCEL_CALLBACK_ALLOWED_HOSTS, the facility's policy (422 "
        "otherwise); the document cannot list a deployment's hosts.",
    ),
    (
        {"include-path": "/v1/batches/{batch_id}", "include-method": "DELETE"},
        {"max_response_time": 60},
        "Withdrawing a batch withdraws its items one by one (a record transition and a removal from the "
        "user's line each): about 9 s for 10,000 items on an idle 2-core machine, over the default 10 s "
        "limit when the machine is shared. A known limit to lift (a batch-level withdraw), not hidden.",
    ),
    # use_after_free: see EXCLUDED_CHECKS.
]
# Checks left out of the whole run, (check, why): the stateful phase follows the run's checks, not an operation's.
EXCLUDED_CHECKS: list[tuple[str, str]] = [
    (
        "use_after_free",
        "DELETE withdraws, it does not delete: the command (or batch) stays readable as aborted for the "
        "result retention, so GET after DELETE is 200 on purpose. The only DELETEs are these two.",
    ),
]


def toml_value(value: object) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them: JSON and TOML agree


def config_text() -> str:
    lines = ["# Written by tests/api/test_schemathesis.py: the by-design exceptions, nothing else.", ""]
    for operation, checks, reason in BY_DESIGN:
        lines += ["[[operations]]", f"# {reason}"]
        lines += [f"{key} = {toml_value(value)}" for key, value in operation.items()]
        for check, options in checks.items():
            if not isinstance(options, dict):  # max_response_time takes a bare number
                lines.append(f"checks.{check} = {toml_value(options)}")
                continue
            lines += [f"checks.{check}.{key} = {toml_value(value)}" for key, value in options.items()]
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def live_api(redis_url: str, simulator: SimulatorServer, worker_factory: Callable[..., object],
             make_worker_env: Callable[..., dict[str, str]]) -> Iterator[tuple[str, str]]:
    """The API on a real socket (werkzeug's threaded server) and a user token; a worker makes it ready."""
    worker_factory(make_worker_env(redis_url, simulator), concurrency=2)
    settings = Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url, max_wait_seconds=2,
                        api_rate_limit="100000 per minute", callback_allowed_hosts=("127.0.0.1",))
    runtime = create_runtime(settings)
    token, _ = runtime.tokens.create("astro@example.org")
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # a line per request would bury a failure
    server = make_server("127.0.0.1", 0, create_api(runtime=runtime), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", token
    server.shutdown()
    thread.join(10)
    runtime.connection.close()
    werkzeug_log.setLevel(level)


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(live_api: tuple[str, str],
                                                                     tmp_path: Path) -> None:
    base_url, token = live_api
    config = tmp_path / "schemathesis.toml"
    config.write_text(config_text())
    junit = tmp_path / "junit.xml"
    run = subprocess.run(
        [SCHEMATHESIS, "--config-file", str(config), "run", f"{base_url}/openapi.json",
         "--checks", "all", "--exclude-checks", ",".join(check for check, _ in EXCLUDED_CHECKS), "--header", f"Authorization: Bearer {token}",
         "--max-examples", "25", "--max-time", str(MAX_SECONDS), "--seed", str(SEED),
         "--workers", "1", "--request-timeout", str(REQUEST_TIMEOUT), "--no-color",
         "--report", "junit", "--report-junit-path", str(junit)],
        capture_output=True, text=True, timeout=MAX_SECONDS + 120,
        cwd=tmp_path,  # schemathesis keeps a cache (.schemathesis/) in its working directory: not in the tree
    )
    output = run.stdout + run.stderr
    if os.environ.get("UKCANCEL_SCHEMATHESIS_OUTPUT"):
        Path(os.environ["UKCANCEL_SCHEMATHESIS_OUTPUT"]).write_text(output)
    assert run.returncode == 0, output[-20000:]
    assert token not in output  # schemathesis masks the Authorization header in its output
    import requests

    document = requests.get(f"{base_url}/openapi.json", timeout=10).json()
    operations = sum(1 for item in document["paths"].values() for method in item if method != "parameters")
    assert f"Tested: {operations}" in output, output[-3000:]  # every operation of the document
    generated = int(re.search(r"^\s*(\d+) generated, ", output, re.MULTILINE).group(1))  # the "Test cases:" line
    assert generated > 300, output[-3000:]
    suites = ElementTree.parse(junit).getroot().iter("testsuite")
    totals = [(int(suite.get("tests", 0)), int(suite.get("failures", 0)), int(suite.get("errors", 0)))
              for suite in suites]
    assert sum(t for t, _, _ in totals) >= operations and all(f == e == 0 for _, f, e in totals), totals
