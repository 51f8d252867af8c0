"""The service on a real local port (embedded store and worker) against the simulator, for the
Python client and the CLI, which speak HTTP to it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from werkzeug.serving import make_server

from ukcancel.assemble import create_api, create_runtime
from ukcancel.embedded import EmbeddedWorker
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer

ASTRO = "astro@example.org"


@dataclass
class Served:
    url: str
    token: str
    runtime: Runtime
    simulator: SimulatorServer


@pytest.fixture
def served(simulator: SimulatorServer) -> Iterator[Served]:
    settings = Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05, retry_max_delay_seconds=0.5,
                        fleet_rate_per_second=50)
    runtime = create_runtime(settings)
    token, _ = runtime.tokens.create(ASTRO, name="cli")
    server = make_server("127.0.0.1", 0, create_api(runtime=runtime), threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with EmbeddedWorker(runtime):
            yield Served(f"http://127.0.0.1:{server.server_port}", token, runtime, simulator)
    finally:
        server.shutdown()
        thread.join(5)
