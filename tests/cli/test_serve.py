"""`ukcancel serve` in embedded mode, as a real process: the production warning and --simulator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ukcancel.cli import main
from ukcancel.settings import PRODUCTION_BASE_URL

UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment() -> dict[str, str]:
    """This environment without any setting that would leave embedded mode or change the target."""
    prefixes = ("UKCANCEL_", "REDIS_URL", "CELERY_", "UKSSDC_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    port: int

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def token(self) -> str:
        line = next(line for line in self.output()[0].splitlines() if line.startswith("Token for"))
        return line.split()[-1]


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Starts `ukcancel serve --port P [args]` and waits until it listens; stops it with SIGINT."""
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        port = free_port()
        stdout, stderr = tmp_path / f"serve-{port}.out", tmp_path / f"serve-{port}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen([UKCANCEL, "serve", "--port", str(port), *args], env=clean_environment(),
                                       stdout=out, stderr=err)
        serve = ServeProcess(process, stdout, stderr, port)
        started.append(serve)
        deadline = time.monotonic() + 60
        while "API listening" not in stdout.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start ({process.poll()}):\n{serve.output()}")
            time.sleep(0.1)
        return serve

    yield start
    for serve in started:
        if serve.process.poll() is None:
            serve.process.send_signal(signal.SIGINT)
            try:
                serve.process.wait(20)
            except subprocess.TimeoutExpired:
                serve.process.kill()
                serve.process.wait(10)


def test_embedded_serve_warns_loudly_that_it_targets_the_production_ukssdc(start_serve: Callable[..., ServeProcess]) -> None:
    serve = start_serve()
    stdout, stderr = serve.output()
    assert "WARNING" in stderr and "PRODUCTION UKSSDC" in stderr
    assert PRODUCTION_BASE_URL in stderr
    assert "--simulator" in stderr
    assert f"UKSSDC base URL: {PRODUCTION_BASE_URL}" in stdout


def test_serve_simulator_sends_the_embedded_workers_calls_to_the_built_in_simulator(start_serve: Callable[..., ServeProcess]) -> None:
    serve = start_serve("--simulator")
    stdout, stderr = serve.output()
    assert "PRODUCTION" not in stderr and PRODUCTION_BASE_URL not in stdout
    assert "built-in simulator" in stdout
    # The seeded simulator's job 1001 has a light curve being built: a real round trip cancels it.
    result = CliRunner().invoke(
        main, ["cancel", "1001", "--products", "LightCurve", "--wait", "--timeout", "30", "--json"],
        env={"UKCANCEL_API_URL": f"http://127.0.0.1:{serve.port}", "UKCANCEL_TOKEN": serve.token(), "REDIS_URL": ""},
    )
    assert result.exit_code == 0, result.output
    assert '"Job cancelled OK"' in result.stdout


def test_serve_simulator_with_redis_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["serve", "--simulator"], env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert "--simulator is for the embedded mode" in result.output
