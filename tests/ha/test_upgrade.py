"""An upgrade with work in flight: release 0.2.0, built from this repository's own history (the commit
CHANGELOG.md names) into a virtual environment of its own, leaves work in every state; this release
starts on the same Redis, migrates the layout once and ends every command with the right tuple,
once. Then the reverse: a 0.2.0 worker started against the migrated layout is harmless (see
docs/operators/high-availability.md, "Upgrades")."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from processes import (
    clean_environment,
    free_port,
    kill_group,
    start_in_own_group,
    stop_group,
    wait_for,
    wait_for_workers,
)
from support import HttpApi, lightcurve_cancelled  # tests/support.py
from werkzeug.serving import make_server

from ukcancel import keys
from ukcancel.assemble import create_api
from ukcancel.layout import CURRENT_LAYOUT, stored_layout
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer
from ukcancel.store import as_text, as_text_dict
from ukcancel.token import TokenRegistry

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NEW_UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))
ASTRO, BULK, OTHER = "astro@example.org", "bulk@example.org", "other@example.org"
CANCEL = "canceljob.php"


def release_commit(version: str) -> str:
    """The commit CHANGELOG.md names for `version` (tags may not travel with a clone)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    section = text.split(f"## [{version}]", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"Commit `([0-9a-f]{7,40})`", section)
    assert match, f"CHANGELOG.md names no commit for {version}"
    return match.group(1)


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bin/ukcancel` of release 0.2.0: its tree from `git archive`, pip-installed (no dependencies:
    they are this environment's, the same pins) into a virtual environment of its own."""
    base = tmp_path_factory.mktemp("release-0.2.0")
    tree, venv = base / "tree", base / "venv"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", release_commit("0.2.0")], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    # The dependencies: this environment's site-packages, after the venv's own (whose ukcancel wins);
    # a path line does not run that directory's .pth files, so this release's editable install stays out.
    (site / "dependencies.pth").write_text(ours + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(tree)], check=True,
                   capture_output=True, timeout=600)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import ukcancel; print(ukcancel.__file__)"],
                           check=True, capture_output=True, text=True, cwd=base).stdout
    assert str(venv) in where, where  # the old release's own package, not this tree's
    return venv / "bin" / "ukcancel"


class Parts:
    """Processes of either release, stopped at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        process = start_in_own_group(argv, {**clean_environment(), **env}, self.tmp_path / f"{name}.log")
        self.started.append(process)
        return process

    def worker(self, binary: str, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        process = self.start([binary, "worker", "--pool=prefork", "--concurrency=2", f"--hostname={name}@%h"], env, name)
        wait_for_workers(env["REDIS_URL"], {name: (process, self.tmp_path / f"{name}.log")}, 60)
        return process

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started:
            stop_group(process, 20)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    running = Parts(tmp_path)
    yield running
    running.stop_all()


def cancels(simulator: SimulatorServer) -> list[dict[str, Any]]:
    return [e for e in simulator.state.log() if e["endpoint"] == CANCEL]


def test_an_upgrade_from_0_2_0_with_work_in_every_state_ends_every_command_once(
    old_release: Path, parts: Parts, redis_url: str, simulator: SimulatorServer,
) -> None:
    store = redis.Redis.from_url(redis_url)
    tokens = {user: TokenRegistry(store).create(user)[0] for user in (ASTRO, BULK, OTHER)}
    env = {
        "REDIS_URL": redis_url, "UKSSDC_BASE_URL": simulator.base_url,
        "UKCANCEL_FLEET_RATE_PER_SECOND": "20", "UKCANCEL_UKSSDC_TIMEOUT_SECONDS": "60",
        # A retry stays due across the upgrade: its back-off outlasts the old release's life.
        "UKCANCEL_RETRY_BASE_SECONDS": "15", "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "20",
        "UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS": "60", "UKCANCEL_LEASE_SECONDS": "5",
    }
    old = str(old_release)
    port = free_port()
    parts.start([old, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env, "old-api")
    old_api = HttpApi(f"http://127.0.0.1:{port}", tokens)
    wait_for(lambda: _answers(old_api.url + "/healthz"), 60, "the 0.2.0 API")
    assert "version" not in requests.get(old_api.url + "/healthz", timeout=5).json()  # 0.2.0 did not say
    old_worker = parts.worker(old, env, "old-worker")

    # A plan, computed by 0.2.0 (applied by this release).
    plan_id = old_api.accepted("/v1/plans", OTHER, {"name": "SN 2026abc"})["id"]
    plan = wait_for(lambda: _ready(old_api, plan_id), 60, "the plan to be ready")
    assert [pair["job_id"] for pair in plan["pairs"]] == [1004]

    # Due for a retry: the UKSSDC answered 503 once; the retry is due in 15 s.
    simulator.state.add_faults(Fault("http503"))
    due_id = old_api.accepted("/v1/cancellations", ASTRO, {"job_id": 1001, "products": ["lc"]})["id"]
    wait_for(lambda: old_api.command(due_id, ASTRO)["state"] == "retrying", 30, "the command to wait for its retry")
    assert store.zscore(keys.DUE, due_id) is not None

    # Running when its worker is killed: the UKSSDC holds the call; the whole worker is SIGKILLed.
    simulator.state.add_faults(Fault("latency", seconds=20))
    running_id = old_api.accepted("/v1/cancellations", ASTRO, {"job_id": 1002, "products": ["lc"]})["id"]
    wait_for(lambda: any(e["body"].get("JobID") in (1002, "1002") for e in cancels(simulator)), 30,
             "the call to be in flight")
    assert old_api.command(running_id, ASTRO)["state"] == "running"
    kill_group(old_worker)

    # Queued with no worker left: a batch and single cancels.
    batch_id = old_api.accepted("/v1/batches", BULK, {"items": [{"job_id": j, "products": ["lc"]}
                                                                for j in range(2001, 2021)]})["id"]
    singles = [old_api.accepted("/v1/cancellations", BULK, {"job_id": j, "products": ["lc"]})["id"]
               for j in range(2021, 2026)]

    # Stream entries: three handled by the 0.2.0 consumer, three it never read.
    old_consumer = parts.start([old, "stream-consumer", "--name", "upgrade", "--block-seconds", "0.2"], env,
                               "old-consumer")
    for job in range(2026, 2029):
        store.xadd(keys.COMMAND_STREAM, {"token": tokens[BULK], "job_id": str(job), "products": "lc",
                                         "request_id": f"s{job}"})
    wait_for(lambda: store.xlen(keys.ACCEPTED_STREAM) == 3, 30, "0.2.0 to accept three entries")
    stop_group(old_consumer, 20)
    for job in range(2029, 2032):
        store.xadd(keys.COMMAND_STREAM, {"token": tokens[BULK], "job_id": str(job), "products": "lc",
                                         "request_id": f"s{job}"})
    stop_group(parts.started[0], 20)  # the 0.2.0 API
    assert stored_layout(store) == 2  # 0.2.0 left no marker

    # This release, on the same Redis.
    new_workers = [parts.worker(NEW_UKCANCEL, env, name) for name in ("new1", "new2")]
    parts.start([NEW_UKCANCEL, "stream-consumer", "--name", "upgrade", "--min-idle-seconds", "5",
                 "--block-seconds", "0.2"], env, "new-consumer")
    assert store.hget(keys.LAYOUT, "version") == str(CURRENT_LAYOUT).encode()
    migrations = sum("migrating the Redis key layout 2" in parts.log(name) for name in ("new1", "new2"))
    assert migrations == 1, "exactly one process migrates"

    app = create_api(Settings.from_env(env))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = HttpApi(f"http://127.0.0.1:{server.server_port}", tokens)
        applied = api.call("POST", f"/v1/plans/{plan_id}/apply", OTHER)
        assert applied.status_code == 202, applied.text
        plan_batch = applied.json()["id"]

        wait_for(lambda: store.xlen(keys.ACCEPTED_STREAM) == 6, 60, "the three unread entries to be accepted")
        stream_ids = [as_text_dict(f)["command_id"] for _i, f in store.xrange(keys.ACCEPTED_STREAM)]
        expected = {
            **{cid: ASTRO for cid in (due_id, running_id)},
            **{cid: BULK for cid in api.batch_items(batch_id, BULK) + singles + stream_ids},
        }
        assert len(expected) == 2 + 20 + 5 + 6
        for command_id, user in expected.items():
            command = api.finished(command_id, user)
            assert lightcurve_cancelled(command), command
            assert [h["state"] for h in command["history"]].count("completed") == 1, command
        for command_id in api.batch_items(plan_batch, OTHER):
            command = api.finished(command_id, OTHER)
            assert command["state"] == "completed" and command["result"][0] == 1, command
            expected[command_id] = OTHER
        wait_for(lambda: store.xlen(keys.RESULTS_STREAM) >= len(expected), 30, "a results entry per command")
        results = Counter(as_text(f[b"command_id"]) for _i, f in store.xrange(keys.RESULTS_STREAM))
        assert results == Counter({cid: 1 for cid in expected}), "one results entry per command, no other"
        for job in [1001, 1002, *range(2001, 2032)]:
            assert simulator.state.product_state(job, "lc") == -4

        # The reverse: a 0.2.0 worker started against the migrated layout (by mistake: the
        # Kubernetes Deployment recreates) is harmless: it completes what it takes, once, and
        # leaves the marker as it is.
        for worker in new_workers:
            stop_group(worker, 30)
        parts.worker(old, env, "old-again")
        late = [api.accepted("/v1/cancellations", BULK, {"job_id": j, "products": ["lc"]})["id"]
                for j in range(2040, 2043)]
        for command_id in late:
            command = api.finished(command_id, BULK)
            assert lightcurve_cancelled(command), command
            assert [h["state"] for h in command["history"]].count("completed") == 1, command
        def late_results() -> Counter[str]:
            return Counter(as_text(f[b"command_id"]) for _i, f in store.xrange(keys.RESULTS_STREAM))

        # The results entry follows the transition (a terminal hook): wait for it.
        wait_for(lambda: all(late_results()[cid] >= 1 for cid in late), 30, "the late commands' results")
        assert all(late_results()[cid] == 1 for cid in late)
        assert stored_layout(store) == CURRENT_LAYOUT
    finally:
        server.shutdown()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _ready(client: HttpApi, plan_id: str) -> dict[str, Any] | None:
    answer = client.call("GET", f"/v1/plans/{plan_id}?wait=5", OTHER)
    assert answer.status_code == 200, answer.text
    return answer.json() if answer.json()["state"] == "ready" else None  # type: ignore[no-any-return]


def test_this_release_refuses_a_layout_newer_than_it_knows(redis_url: str, parts: Parts) -> None:
    store = redis.Redis.from_url(redis_url)
    store.hset(keys.LAYOUT, mapping={"version": CURRENT_LAYOUT + 1, "release": "0.4.0"})
    process = parts.start([NEW_UKCANCEL, "worker", "--pool=solo", "--hostname=refused@%h"],
                          {"REDIS_URL": redis_url}, "refused")
    assert process.wait(60) != 0
    log = parts.log("refused")
    assert f"layout {CURRENT_LAYOUT + 1}" in log and "0.4.0" in log and f"layout {CURRENT_LAYOUT})" in log, log
    assert store.hget(keys.LAYOUT, "version") == str(CURRENT_LAYOUT + 1).encode()
