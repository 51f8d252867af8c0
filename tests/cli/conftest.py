"""The service on a real local port (embedded store and worker) against the simulator, for the
Python client and the CLI, which speak HTTP to it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from click.testing import CliRunner, Result
from werkzeug.serving import make_server

from ukcancel.assemble import create_api, create_runtime
from ukcancel.cli import main
from ukcancel.fleet import live_workers
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.worker.embedded import EmbeddedWorker

ASTRO = "astro@example.org"


@dataclass
class Served:
    url: str
    token: str
    runtime: Runtime
    simulator: SimulatorServer


@contextmanager
def serving(simulator: SimulatorServer, with_worker: bool = True) -> Iterator[Served]:
    """The API on a free port around a fresh embedded runtime; with an embedded worker unless told not."""
    settings = Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05, retry_max_delay_seconds=0.5,
                        fleet_rate_per_second=50)
    runtime = create_runtime(settings)
    token, _ = runtime.tokens.create(ASTRO, name="cli")
    server = make_server("127.0.0.1", 0, create_api(runtime=runtime), threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with ExitStack() as stack:
            if with_worker:
                stack.enter_context(EmbeddedWorker(runtime))
                wait_for_heartbeat(runtime)
            yield Served(f"http://127.0.0.1:{server.server_port}", token, runtime, simulator)
    finally:
        server.shutdown()
        thread.join(5)


def wait_for_heartbeat(runtime: Runtime, timeout: float = 10) -> None:
    """Until the embedded worker is live for `/readyz`, so a test never sees it half started."""
    deadline = time.monotonic() + timeout
    while not live_workers(runtime.connection):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded worker sent no heartbeat in {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def served(simulator: SimulatorServer) -> Iterator[Served]:
    with serving(simulator) as api:
        yield api


@pytest.fixture
def served_without_worker(simulator: SimulatorServer) -> Iterator[Served]:
    """The API with no worker at all: commands stay queued and `/readyz` reports no live worker."""
    with serving(simulator, with_worker=False) as api:
        yield api


CliRun = Callable[..., Result]


@pytest.fixture
def ukcancel() -> CliRun:
    """`ukcancel(api, *args, env=...)`: the CLI with `api`'s URL and token in the environment, as a
    user would set them; stderr is kept apart in `result.stderr`."""

    def run(api: Served, *args: str, env: dict[str, str] | None = None) -> Result:
        environment = {"UKCANCEL_API_URL": api.url, "UKCANCEL_TOKEN": api.token, "REDIS_URL": "", "COLUMNS": "200",
                       **(env or {})}
        return CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)

    return run
