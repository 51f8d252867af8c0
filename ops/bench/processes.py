"""Child-process helpers that the benchmarks (harness.py) and the tests' fixtures (tests/conftest.py)
both use: a free port, a clean environment for a child, a child in its own process group with its
output in a log file, stopping or killing that group, waiting for `ukcancel worker`s to be ready,
and probing or starting a Redis server.

Why this file, here: it is test and benchmark tooling, so it stays out of the `ukcancel` package
(and out of the image: .dockerignore drops ops/bench). `python ops/bench/run.py` has this directory
on sys.path as the script's own; pytest adds it by `pythonpath = ["ops/bench"]` in pyproject.toml's
[tool.pytest.ini_options]. So both import it as `processes` with no sys.path change in code, which a
module under tests/ would need in the benchmark. Standard library, redis and `ukcancel.keys` only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Mapping

import redis

from ukcancel import keys

# Settings that must not leak from this environment into a child's.
SETTING_PREFIXES = ("UKCANCEL_", "REDIS_URL", "CELERY_", "UKSSDC_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment() -> dict[str, str]:
    """This environment without any ukcancel, Celery, Redis or UKSSDC setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}


def start_in_own_group(argv: list[str], env: dict[str, str], log_path: Path,
                       cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """`argv` in a new session (its own process group: pgid = pid), stdout and stderr to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def kill_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL the process and everything in its group (a crash, not a shutdown), and reap it."""
    signal_group(process, signal.SIGKILL)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the group (a warm shutdown), then SIGKILL it if the process outlives `timeout`."""
    if process.poll() is None:
        signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)


def wait_until(probe: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `probe` until it is true (True) or `timeout` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it is truthy and return its value; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def redis_answers(url: str, connect_timeout: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=connect_timeout).ping())
    except redis.RedisError:
        return False


def redis_server_argv(binary: str, port: int, *extra: str) -> list[str]:
    """A throw-away redis-server on 127.0.0.1:`port`: no RDB snapshots, no AOF."""
    return [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", *extra]


def wait_for_workers(redis_url: str, workers: Mapping[str, tuple[subprocess.Popen[bytes], Path]],
                     timeout: float) -> None:
    """Until every `ukcancel worker` (name -> process, log), started with `--hostname=NAME@%h`, has
    registered itself in Redis and logged "ready". RuntimeError with its log if one exits or is late."""
    pending = dict(workers)
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while pending:
            members = [m.decode() for m in client.zrange(keys.WORKERS, 0, -1)]
            for name, (process, log_path) in list(pending.items()):
                if process.poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {process.returncode}:\n{_log(log_path)}")
                if any(m.startswith(f"{name}@") for m in members) and "ready" in _log(log_path):
                    del pending[name]
            if pending and time.monotonic() >= deadline:
                logs = "".join(f"\n--- {name}:\n{_log(log)[-2000:]}" for name, (_, log) in sorted(pending.items()))
                raise RuntimeError(f"workers not ready after {timeout:g} s: {sorted(pending)}{logs}")
            if pending:
                time.sleep(0.1)
    finally:
        client.close()


def _log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
