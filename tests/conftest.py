"""Shared fixtures: the simulator, a real Redis server, real Celery worker processes, the API.

Real Redis: the server on 127.0.0.1:6379 when it answers (each test that needs one gets a
database number of its own from 9-15, flushed before and after), otherwise a `redis-server` this
session starts on a free port. Fixtures install nothing: without the binary they fail saying
what is missing (`.ci/run` installs the services).

The one API test client and the one fake clock are in `tests/support.py` (a module, so test
modules can import them to subclass or annotate); `api_client` and `fake_clock` here hand them out.
`processes` (child-process helpers) is ops/bench/processes.py, shared with the benchmarks.
"""

from __future__ import annotations

import fcntl
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from processes import (  # ops/bench/processes.py, on the path by pyproject.toml's pytest `pythonpath`
    clean_environment,
    free_port,
    kill_group,
    redis_answers,
    redis_server_argv,
    start_in_own_group,
    stop_group,
    wait_for_workers,
    wait_until,
)
from support import ApiClient, FakeClock  # tests/support.py

from ukcancel.assemble import create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer, SimulatorState

REDIS_DATABASES = range(9, 16)
UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))


# -- the UKSSDC simulator ------------------------------------------------------------------------
@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A fresh simulator per test, on a free port, with the default seeded job table."""
    with SimulatorServer(state=SimulatorState()) as sim:
        yield sim


@pytest.fixture
def swifttools_request() -> Callable[..., Any]:
    """Factory of official-client (`swifttools`) requests that believe they submitted a job.

    `swifttools_request(sim, user, job_id, *products)`: the products are added through the public
    API. The client has no public way to adopt a job submitted elsewhere, so the submitted flag,
    its status 1 ("submitted, running"), the JobID and the base URL (the simulator) are set through
    private attributes: `cancelProducts` requires `submitted` and `statusCode == 1`.
    """
    from swifttools.ukssdc.xrt_prods import XRTProductRequest

    def adopt(sim: SimulatorServer, user: str, job_id: int, *products: str) -> XRTProductRequest:
        request = XRTProductRequest(user, silent=True)
        for product in products:
            request.addProduct(product)
        request._submitted = True
        request._status = 1
        request._jobID = job_id
        request._baseURL = sim.base_url
        return request

    return adopt


# -- a real Redis server ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """`redis://host:port` of a real Redis server (without a database number)."""
    if redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379"
        return
    binary = shutil.which("redis-server")
    if binary is None:  # fixtures install nothing: .ci/run installs the services the tests need
        pytest.fail("No Redis answers on 127.0.0.1:6379 and redis-server is not installed: start Redis "
                    "there, or install redis-server (.ci/run does both).", pytrace=False)
    port = free_port()
    process = subprocess.Popen(redis_server_argv(binary, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}"
    if not wait_until(lambda: redis_answers(url + "/0"), 10):
        process.kill()
        raise RuntimeError("redis-server did not start")
    yield url
    process.terminate()
    process.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The AMQP URL of the RabbitMQ on 127.0.0.1:5672, started when it is installed but not running."""
    if not _port_open(5672):
        if shutil.which("rabbitmq-server") is None:  # fixtures install nothing: .ci/run does
            pytest.fail("No RabbitMQ answers on 127.0.0.1:5672 and rabbitmq-server is not installed: start "
                        "RabbitMQ there, or install rabbitmq-server (.ci/run does both).", pytrace=False)
        subprocess.run(["rabbitmq-server", "-detached"], check=True, capture_output=True)
        deadline = time.monotonic() + 90
        while not _port_open(5672):
            if time.monotonic() > deadline:
                raise RuntimeError("RabbitMQ did not start on 127.0.0.1:5672")
            time.sleep(0.5)
    return "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="session")
def _free_databases() -> queue.SimpleQueue[int]:
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for number in REDIS_DATABASES:
        free.put(number)
    return free


@contextmanager
def _database_lease(redis_server: str, free: queue.SimpleQueue[int], timeout: float = 600) -> Iterator[int]:
    """A database number no other test is using, in this pytest session or in another one.

    Several pytest sessions on one host share the Redis on 6379; a file lock per database
    keeps one session from flushing a database another session's test is using.
    """
    deadline = time.monotonic() + timeout
    port = redis_server.rsplit(":", 1)[-1]
    while True:
        number = free.get_nowait()
        lock = (Path(tempfile.gettempdir()) / f"ukcancel-test-redis-{port}-db{number}.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            free.put(number)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no free Redis database in {list(REDIS_DATABASES)} after {timeout} s") from None
            time.sleep(0.1)
            continue
        try:
            yield number
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
            free.put(number)
        return


@pytest.fixture
def redis_url(redis_server: str, _free_databases: queue.SimpleQueue[int]) -> Iterator[str]:
    """A Redis database of this test's own, empty at the start and flushed at the end."""
    with _database_lease(redis_server, _free_databases) as number:
        url = f"{redis_server}/{number}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            yield url
        finally:
            client.flushdb()
            client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- real Celery worker processes ---------------------------------------------------------------
@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        """SIGKILL the worker and all its children (a crash, not a shutdown)."""
        kill_group(self.process)

    def stop(self) -> None:
        stop_group(self.process, 15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class WorkerFactory:
    """Starts `ukcancel worker` processes with a given environment and stops them at teardown."""

    tmp_path: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def __call__(self, env: dict[str, str], *, pool: str = "threads", concurrency: int = 4,
                 wait_ready: bool = True, name: str | None = None) -> WorkerProcess:
        name = name or f"w{len(self.started) + 1}"
        log_path = self.tmp_path / f"worker-{name}.log"
        process = start_in_own_group(
            [UKCANCEL, "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--hostname={name}@%h"],
            {**clean_environment(), **env}, log_path,
        )
        worker = WorkerProcess(process, log_path)
        self.started.append(worker)
        if wait_ready:
            wait_for_workers(env["REDIS_URL"], {name: (process, log_path)}, 30)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path)
    yield factory
    factory.stop_all()


def worker_env(redis_url: str, simulator: SimulatorServer, **extra: str) -> dict[str, str]:
    """The environment of a worker against `redis_url` and the simulator, with fast retries."""
    env = {
        "REDIS_URL": redis_url,
        "UKSSDC_BASE_URL": simulator.base_url,
        "UKCANCEL_RETRY_BASE_SECONDS": "0.05",
        "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "0.5",
        "UKCANCEL_UKSSDC_TIMEOUT_SECONDS": "1",
        "UKCANCEL_FLEET_RATE_PER_SECOND": "50",
        "UKCANCEL_FLEET_MAX_IN_FLIGHT": "8",
        "UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS": "30",
    }
    env.update(extra)
    return env


@pytest.fixture
def make_worker_env() -> Callable[..., dict[str, str]]:
    return worker_env


# -- the shared test client and clock (tests/support.py) --------------------------------------------
@pytest.fixture
def fake_clock() -> FakeClock:
    """Time that moves only when the test says so."""
    return FakeClock()


@pytest.fixture
def api_runtime(redis_url: str, simulator: SimulatorServer) -> Iterator[Runtime]:
    """The API's side (records, dispatch) on the test's Redis, with the simulator as its UKSSDC: what
    a test with worker processes submits through."""
    runtime = create_runtime(Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url))
    yield runtime
    runtime.connection.close()


@pytest.fixture
def api_client() -> Callable[[Runtime], ApiClient]:
    """Makes the API test client over a runtime: ``api_client(runtime).get("/v1/jobs")``."""
    return ApiClient

