"""Every runnable example of the documentation runs, as written, against every part of the service
started by `ukcancel run --simulator` on real Redis: the shell ones with bash (errors stop them),
the Python ones with this interpreter. Each reads what it needs from the environment the local
trial sets up (REDIS_URL, UKCANCEL_API_URL, UKCANCEL_TOKEN, UKCANCEL_CALLBACK_SECRET,
UKCANCEL_CALLBACK_ALLOWED_HOSTS). The trial itself runs in tests/docs/test_newcomer.py."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from examples import examples
from processes import clean_environment, free_port, kill_group, start_in_own_group, wait_for

UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))
TRIAL = {"trial", "trial.py"}
# What some examples must print: the stream examples read from the entry's id, so the accepted
# entry and the result are found even though both were written before the read began.
EXPECTED = {
    "stream-redis-cli": ("ukcancel:commands:accepted", "command_id", "run-42", "ukcancel:results", "result"),
    "stream-python": ("completed [",),
    "http-round-trip": ("completed [",),
    "python-client": ("1.0\n",),  # wait_batch's progress reaches the whole batch
}


def test_every_example_is_found_and_the_trial_is_among_them() -> None:
    found = examples()
    assert TRIAL <= set(found)
    assert {"stream-redis-cli", "stream-python", "python-client", "http-round-trip"} <= set(found)


@pytest.fixture
def running(redis_url: str, tmp_path: Path):
    env = {**clean_environment(), "REDIS_URL": redis_url, "UKCANCEL_API_URL": f"http://127.0.0.1:{free_port()}",
           "UKCANCEL_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{free_port()}",
           "UKCANCEL_RETRY_BASE_SECONDS": "0.05", "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "0.5",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "run.log"
    run = start_in_own_group([UKCANCEL, "run", "--simulator", "--api-workers", "1", "--pool", "threads"], env, log)
    try:
        wait_for(lambda: "ready:" in log.read_text() or run.poll() is not None, 60, "ukcancel run")
        assert run.poll() is None, log.read_text()
        created = subprocess.run([UKCANCEL, "token", "create", "--user", "astro@example.org", "--env"], env=env,
                                 capture_output=True, text=True, check=True)
        for assignment in shlex.split(created.stdout.removeprefix("export ")):
            name, value = assignment.split("=", 1)
            env[name] = value
        yield env
    finally:
        kill_group(run)


def test_every_runnable_example_runs_as_written(running: dict[str, str], tmp_path: Path) -> None:
    ran = []
    for name, example in examples().items():
        if name in TRIAL:
            continue
        if example.language == "sh":
            argv = ["bash", "-e", "-o", "pipefail", "-c", example.code]
        else:
            script = tmp_path / f"{name}.py"
            script.write_text(example.code)
            argv = [sys.executable, str(script)]
        result = subprocess.run(argv, env=running, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{example.page} {name}:\n{result.stdout}\n{result.stderr}"
        for expected in EXPECTED.get(name, ()):
            assert expected in result.stdout, f"{example.page} {name}: no {expected!r} in\n{result.stdout}"
        ran.append(name)
    assert len(ran) >= 4
