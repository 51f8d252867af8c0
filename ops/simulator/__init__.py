"""A stand-in for the UKSSDC XRT product servers, for tests, the demo and benchmarks.

It speaks the same wire protocol as the real servers (JSON labelled as HTML, `OK`/`ERROR`,
per-product codes) over real HTTP, keeps a job table that cancellations change, and can be
told to misbehave on the next requests (`Fault`) so clients can be tested against outages,
timeouts, broken replies and ambiguous outcomes.
"""

from .server import SimulatorServer, serve_forever
from .state import (
    API_VERSION,
    DEFAULT_JOBS_PATH,
    FAULT_KINDS,
    PRODUCTS,
    Fault,
    SimulatorState,
    load_jobs,
    load_users,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_JOBS_PATH",
    "FAULT_KINDS",
    "PRODUCTS",
    "Fault",
    "SimulatorServer",
    "SimulatorState",
    "load_jobs",
    "load_users",
    "serve_forever",
]
