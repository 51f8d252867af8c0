"""`ukcancel demo`: the seed guide's scenario, end to end through the queue, on the embedded default.

Starts the UKSSDC simulator, an embedded store and Celery worker, and the API on a local port;
then, as the guide does, cancels job 1001's light curve and afterwards everything, with the
Python client over HTTP, printing the tuples users know from `cancelProducts()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from werkzeug.serving import make_server

from ukcancel.assemble import create_api, create_runtime
from ukcancel.client import Client
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer, SimulatorState
from ukcancel.worker.embedded import EmbeddedWorker

DEMO_USER = "astro@example.org"
DEMO_JOB = 1001
EXPECTED_FIRST = (1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}})
EXPECTED_SECOND_CODES = {"LightCurve": 1, "StandardPos": 0}


def run_demo(echo: Callable[[str], None] = print) -> int:
    """Run the scenario; 0 when both tuples are the ones the guide shows."""
    import threading

    with SimulatorServer(SimulatorState()) as simulator:
        settings = Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.2, fleet_rate_per_second=5)
        runtime = create_runtime(settings)
        token, _ = runtime.tokens.create(DEMO_USER, name="demo")
        server = make_server("127.0.0.1", 0, create_api(runtime=runtime), threaded=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # keep the transcript readable
        api_url = f"http://127.0.0.1:{server.server_port}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with EmbeddedWorker(runtime):
                echo(f"API {api_url}  |  embedded store + Celery worker  |  UKSSDC simulator {simulator.base_url}")
                echo(f"Token for {DEMO_USER}: {token[:10]}... (demo only)")
                echo(f"Job {DEMO_JOB} asked for a LightCurve and a StandardPos.\n")
                client = Client(api_url, token)

                echo(f">>> cancelStatus = client.cancel_products({DEMO_JOB}, ['LightCurve'])")
                first = client.cancel_products(DEMO_JOB, ["LightCurve"])
                echo(f">>> print(cancelStatus)\n{first}\n")

                echo(f">>> ok, cancelStatus = client.cancel_products({DEMO_JOB})   # 'all'")
                ok, detail = client.cancel_products(DEMO_JOB)  # type: ignore[misc]
                echo(f">>> ok\n{ok}\n>>> cancelStatus\n{detail}\n")
        finally:
            server.shutdown()

    codes = {name: entry["code"] for name, entry in detail.items()}
    if first == EXPECTED_FIRST and ok == 2 and codes == EXPECTED_SECOND_CODES:
        echo("As in the guide: 1 (success) for the light curve, then 2 (partial) for everything.")
        return 0
    echo("Unexpected results: the scenario did not come out as the guide describes.")
    return 1
