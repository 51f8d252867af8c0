"""The newcomer's path, as the documentation writes it: in a copy of the repository, from a clean
virtual environment (pip's cache is reused), the local trial's commands bring every part up with
`ukcancel run --simulator` and go through a token, a cancel, a batch, a stream entry and a
callback verified with `standardwebhooks`, then stop every part.

Only three values of the trial are changed, so that it runs beside other test sessions: its Redis
database (a database of this test's own), the API's port and the callback receiver's port (free
ports). Everything else runs as written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from examples import examples
from processes import clean_environment, free_port

ROOT = Path(__file__).resolve().parents[2]
TRIAL_SECONDS = 900  # a clean install is most of it


def repository_copy(destination: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination


def test_the_local_trial_runs_as_documented_from_a_clean_environment(redis_url: str, tmp_path: Path) -> None:
    found = examples()
    trial, pipeline = found["trial"].code, found["trial.py"].code
    api, callback = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    for written, ours in (("redis://127.0.0.1:6379/0", redis_url), ("127.0.0.1:8000", api),
                          ("127.0.0.1:8080", callback)):
        assert trial.count(written) == 1, written
        trial = trial.replace(written, ours)
    checkout = repository_copy(tmp_path / "ukssdc-cancel")
    assert not (checkout / ".venv").exists()
    (checkout / "trial.py").write_text(pipeline)
    env = {k: v for k, v in clean_environment().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "/.venv" not in p)
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", trial], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=TRIAL_SECONDS)
    log = (checkout / "ukcancel-run.log").read_text() if (checkout / "ukcancel-run.log").exists() else ""
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n--- ukcancel-run.log\n{log}"
    out = result.stdout
    # The cancel, then the batch (piped output: tab-separated), the stream result and the callback.
    assert "\t1001\tLightCurve\tcompleted\t1\tLightCurve 0: Job cancelled OK\t" in out
    assert "batch " in out and ": completed, 2 items, 100% done" in out
    assert "stream result: (" in out and "callback verified: completed (" in out
    assert "processes:       2 API, 1 worker, 1 stream consumer" in out and "WARNING" not in out
    ready = next(line for line in log.splitlines() if line.startswith("ready:"))
    assert "1 stream consumer" in ready
    assert log.rstrip().endswith("stopped"), log[-2000:]
    assert "MonkeyPatchWarning" not in log and "Traceback" not in log
