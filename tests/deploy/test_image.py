"""The container image, built and run without a container engine.

ops/image/build-image.sh builds ops/Dockerfile, unchanged, with buildah (chroot isolation, host
network) on the stand-in python:3.11-slim of ops/image/build-base.sh (debootstrapped once per
version of that script, then cached under /var/tmp). The built image then runs the compose file's
API command, `ukcancel worker` and the simulator against this test's own Redis database, and a
cancellation goes through its HTTP API. Then the three Deployments of ops/k8s run from the image
as their pod specs say (command, environment, user, read-only root with only their emptyDirs
writable, no capabilities, no privilege escalation; see run_as_pod.py), and cancellations go
through their HTTP API and the command stream. The buildah store is a temporary one of this
module's.

Needs root, buildah and debootstrap (.ci/run installs them); without them these tests skip and say
why, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import k8s_manifests as k8s
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from test_deployment_files import _argv, _run_environment, _services

from ukcancel import __version__
from ukcancel.client import Client, as_tuple

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
BUILD_BASE = ROOT / "ops" / "image" / "build-base.sh"
BUILD_IMAGE = ROOT / "ops" / "image" / "build-image.sh"
RUN_AS_POD = Path(__file__).with_name("run_as_pod.py")
IMAGE = "localhost/ukssdc-cancel:test"
BASE = "python:3.11-slim"
USER_ID = 10001
TEST_EXTRAS = ("pytest", "hypothesis", "swifttools")
ASTRO = "astro@example.org"
CANCELLED_OK = {"code": 0, "text": "Job cancelled OK"}
# Room the layers of ops/Dockerfile may take on top of the base: the runtime dependencies are
# about 60 MB; a source tree, a wheelhouse or the test extras left behind would show here.
MAX_ADDED_BYTES = 120 * 10**6


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the image cannot be built here, and CI must build it: {reason}")
    pytest.skip(f"the image cannot be built here: {reason}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _descendants(pid: int) -> list[tuple[int, int, str]]:
    """(pid, real uid, command line) of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        stack.extend(children.get(child, []))
        try:
            uid = int(_status(child)["Uid"].split()[0])
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        found.append((child, uid, cmdline))
    return found


@dataclass
class Running:
    """A process that `buildah run` started from the image."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass


@dataclass
class Buildah:
    """buildah against this module's own store; containers made through it are removed at the end."""

    env: dict[str, str]
    logs: Path
    containers: list[str] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(["buildah", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr or result.stdout}"
        return result.stdout

    def container(self) -> str:
        name = self("from", "--pull=never", IMAGE).strip().splitlines()[-1]
        self.containers.append(name)
        return name

    def _run_args(self, container: str, argv: list[str], env: dict[str, str], tmpfs: tuple[str, ...]) -> list[str]:
        args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for directory in tmpfs:
            args += ["--mount", f"type=tmpfs,destination={directory}"]
        return [*args, container, "--", *argv]

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
        """Run a command to its end in a fresh container of the image; its output."""
        args = self._run_args(self.container(), argv, env or {}, ())
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{argv} in the image: {result.stdout}{result.stderr}"
        return result.stdout

    def start(self, name: str, argv: list[str], env: dict[str, str], tmpfs: tuple[str, ...] = ()) -> Running:
        """Start a long-running command in a container of its own; stopped at the end."""
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                self._run_args(self.container(), argv, env, tmpfs),
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        running = Running(name, process, log_path)
        self.running.append(running)
        return running

    def start_pod(self, name: str, spec: dict[str, Any]) -> Running:
        """Start a command as a Kubernetes container would run it (run_as_pod.py); stopped at the end."""
        spec_path = self.logs / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", sys.executable, str(RUN_AS_POD), str(spec_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        running = Running(name, process, log_path)
        self.running.append(running)
        return running

    def image_config(self, name: str) -> dict[str, Any]:
        return json.loads(self("inspect", "--type", "image", name))["OCIv1"]["config"]

    def image_bytes(self, name: str) -> int:
        """The image's size: its layers, uncompressed, as its manifest lists them."""
        manifest = json.loads(json.loads(self("inspect", "--type", "image", name))["Manifest"])
        return sum(int(layer["size"]) for layer in manifest["layers"])

    def close(self) -> None:
        for running in self.running:
            running.stop()
        for container in self.containers:
            subprocess.run(["buildah", "rm", container], env=self.env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    if os.geteuid() != 0:
        _unavailable("buildah's chroot isolation and debootstrap need root")
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed (Debian package {tool})")
    home = tmp_path_factory.mktemp("buildah")
    (home / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{home}/graph"\nrunroot = "{home}/run"\n'
    )
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"), "PYTHON": sys.executable}
    probe = subprocess.run(["buildah", "info"], env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        _unavailable(f"`buildah info` fails: {probe.stderr.strip()}")
    (home / "logs").mkdir()
    tool = Buildah(env, home / "logs")
    try:
        yield tool
    finally:
        tool.close()
        subprocess.run(["buildah", "rmi", "--all", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def image(buildah: Buildah, deploy_report: list[str]) -> str:
    """The image, built from ops/Dockerfile as it is."""
    timings = {}
    for step, script in (("stand-in base", BUILD_BASE), ("image", BUILD_IMAGE)):
        log = buildah.logs / f"build-{script.stem}.log"
        started = time.monotonic()
        with log.open("wb") as out:
            argv = [str(script), IMAGE] if script == BUILD_IMAGE else [str(script)]
            result = subprocess.run(argv, env=buildah.env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
        timings[step] = time.monotonic() - started
        if result.returncode != 0:
            pytest.fail(f"{script.name} failed ({result.returncode}):\n{log.read_text(errors='replace')[-6000:]}")
    fresh = "debootstrap" in (buildah.logs / "build-build-base.log").read_text()
    deploy_report.append(
        f"image build: stand-in base {timings['stand-in base']:.0f} s "
        f"({'debootstrapped' if fresh else 'from the cached root filesystem'}), ops/Dockerfile {timings['image']:.0f} s"
    )
    return IMAGE


@pytest.fixture(scope="module")
def image_root(buildah: Buildah, image: str) -> Iterator[Path]:
    """The image's file system (a container's mount), to inspect from the host and to run the pods on."""
    container = buildah.container()
    yield Path(buildah("mount", container).strip())
    buildah("umount", container)


# -- what is in the image -------------------------------------------------------------------------
def test_the_image_reports_its_version(buildah: Buildah, image: str) -> None:
    assert buildah.run(["ukcancel", "--version"]).strip() == f"ukcancel, version {__version__}"


def test_the_image_runs_as_the_non_root_user(buildah: Buildah, image: str) -> None:
    assert buildah.run(["id", "-u"]).strip() == str(USER_ID)
    assert buildah.run(["id", "-g"]).strip() == str(USER_ID)


def test_the_image_holds_the_wheel_and_no_test_extras(buildah: Buildah, image: str) -> None:
    names = json.loads(buildah.run([
        "python", "-c",
        "import importlib.metadata as m, json; print(json.dumps(sorted(d.metadata['Name'].lower()"
        " for d in m.distributions())))",
    ]))
    assert "ukssdc-cancel" in names and "gunicorn" in names and "celery" in names, names
    assert not [name for name in TEST_EXTRAS if name in names], names
    # A regular install from the wheel: the package lives in site-packages, not in a source tree.
    location = buildah.run(["python", "-c", "import ukcancel; print(ukcancel.__file__)"]).strip()
    assert location.startswith("/usr/local/lib/python3.11/site-packages/ukcancel/"), location


def test_the_image_holds_no_source_tree_and_nothing_of_the_build_host(image_root: Path) -> None:
    for path in ("src", "wheels", "tests", "app/tests", "etc/pip.conf"):
        assert not (image_root / path).exists(), f"/{path} is in the image"
    assert list((image_root / "app").iterdir()) == [], "/app (the working directory) must be empty"
    # The build's pip configuration and CA bundle were mounted for the build only; buildah leaves
    # the empty mount point behind.
    pip_config = image_root / "etc" / "xdg" / "pip"
    assert not pip_config.exists() or list(pip_config.iterdir()) == []
    leftovers = [p for p in image_root.rglob("*") if p.name in ("conftest.py", "test_pipeline.py", "pyproject.toml")]
    assert not leftovers, f"test or build files in the image: {leftovers[:5]}"


def test_the_image_size(buildah: Buildah, image: str, deploy_report: list[str]) -> None:
    total, base = buildah.image_bytes(IMAGE), buildah.image_bytes(BASE)
    deploy_report.append(
        f"image size: {total / 1e6:.0f} MB (the stand-in {BASE} {base / 1e6:.0f} MB + ops/Dockerfile's layers "
        f"{(total - base) / 1e6:.0f} MB)"
    )
    assert 0 < total - base < MAX_ADDED_BYTES, f"ops/Dockerfile adds {(total - base) / 1e6:.0f} MB to the base"


# -- the image at work ----------------------------------------------------------------------------
def _wait(condition: Any, what: str, processes: list[Running], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for running in processes:
            running.alive()
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(f"--- {r.name}\n{r.log()[-3000:]}" for r in processes)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")


def _answers(url: str, status: int = 200) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == status
    except requests.RequestException:
        return False


def test_a_cancellation_through_the_image(
    buildah: Buildah, image: str, redis_url: str, deploy_report: list[str]
) -> None:
    started = time.monotonic()
    services = _services()
    sim_port, api_port = _free_port(), _free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"

    # The simulator, as the compose file runs it, on a free loopback port (the host's network).
    sim_argv = _argv(services["simulator"]["command"])
    sim_argv[sim_argv.index("--host") + 1] = "127.0.0.1"
    sim_argv[sim_argv.index("--port") + 1] = str(sim_port)
    simulator = buildah.start("simulator", sim_argv, {})

    # The compose environment of the parts, pointed at this test's Redis database and the simulator.
    # The worker's metrics port too: a free one here, since the parts share the host's network.
    env = {**_run_environment(services["worker"]), "REDIS_URL": redis_url, "UKSSDC_BASE_URL": sim_url,
           "UKCANCEL_WORKER_CONCURRENCY": "2", "UKCANCEL_RETRY_BASE_SECONDS": "0.05",
           "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "0.5", "UKCANCEL_WORKER_METRICS_PORT": str(_free_port())}
    multiproc = env["PROMETHEUS_MULTIPROC_DIR"]
    worker = buildah.start("worker", _argv(services["worker"]["command"]), env, tmpfs=(multiproc,))
    # The compose api command, bound to a free loopback port instead of 0.0.0.0:8000.
    api_argv = _argv(services["api"]["command"])
    api_argv[api_argv.index("--bind") + 1] = f"127.0.0.1:{api_port}"
    api = buildah.start("api", api_argv, {**env, **_run_environment(services["api"]), "REDIS_URL": redis_url,
                                          "UKSSDC_BASE_URL": sim_url}, tmpfs=(multiproc,))
    parts = [simulator, worker, api]

    _wait(lambda: _answers(f"{sim_url}/_sim/log"), "the simulator", parts)
    _wait(lambda: _answers(f"{api_url}/healthz"), "the API's /healthz", parts)
    # /readyz is 200 once Redis answers and a worker has sent its heartbeat.
    _wait(lambda: _answers(f"{api_url}/readyz"), "the API's /readyz (a live worker)", parts)

    created = buildah.run(["ukcancel", "token", "create", "--user", ASTRO], {"REDIS_URL": redis_url})
    token = next(line.split()[1] for line in created.splitlines() if line.startswith("token:"))

    result = Client(api_url, token, timeout=30).cancel_products(1001, ["LightCurve"])
    assert result == (1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}})
    calls = [entry for entry in requests.get(f"{sim_url}/_sim/log", timeout=5).json()
             if entry["endpoint"] == "canceljob.php"]
    # One call reached the simulator, for that job and product, on the user's behalf.
    assert [(c["body"]["JobID"], c["body"]["what"], c["body"]["UserID"]) for c in calls] == [(1001, "lc", ASTRO)]

    # Every process of the parts runs as the image's user, not as root.
    for running in parts:
        processes = [(pid, uid, cmd) for pid, uid, cmd in _descendants(running.process.pid)
                     if not cmd.startswith("buildah")]
        assert processes, f"{running.name}: no process found"
        assert {uid for _pid, uid, _cmd in processes} == {USER_ID}, processes
    deploy_report.append(f"image run: simulator, worker and API started and one cancellation done in "
                         f"{time.monotonic() - started:.0f} s")


# -- the Kubernetes pods, emulated on the image -----------------------------------------------------
def _pod(buildah: Buildah, root: Path, deployment: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """The run_as_pod.py spec of a Deployment's container: what its pod spec says, on this host."""
    config = buildah.image_config(IMAGE)
    security = k8s.pod_spec(deployment)["securityContext"]
    uid, gid = security["runAsUser"], security["runAsGroup"]
    passwd = {int(f[2]): f[5] for f in (line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines())}
    env = dict(item.split("=", 1) for item in config["Env"])
    # As a container runtime does: HOME from the image's passwd, HOSTNAME the pod's name.
    env |= {"HOME": passwd[uid], "HOSTNAME": f"{deployment['metadata']['name']}-0"}
    env |= k8s.environment(deployment) | overrides
    pod_root = buildah.logs / f"root-{deployment['metadata']['name']}"
    pod_root.mkdir()
    return {"image_root": str(root), "root": str(pod_root), "writable": k8s.empty_dirs(deployment), "uid": uid,
            "gid": gid, "workdir": config["WorkingDir"], "env": env, "command": list(k8s.container(deployment)["command"])}


def _root_mount_options(pid: int) -> tuple[set[str], dict[str, str]]:
    """The options of a process's root mount, and the file system type of each mount below it."""
    root, types = set(), {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if parts[4] == "/":
            root = set(parts[5].split(","))
        types[parts[4]] = tail.split()[0]
    return root, types


def test_the_kubernetes_pods_run_on_the_image(
    buildah: Buildah, image: str, image_root: Path, redis_url: str, deploy_report: list[str]
) -> None:
    started = time.monotonic()
    sim_port, api_port = _free_port(), _free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    simulator = buildah.start("pod-simulator", ["ukcancel", "simulator", "--port", str(sim_port)], {})

    # The Secret's placeholders and the ConfigMap's UKSSDC replaced, as an operator would.
    # The worker pod's metrics port on a free port of the host's network, as the API's bind below.
    metrics_port = _free_port()
    overrides = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "UKSSDC_BASE_URL": sim_url,
                 "UKCANCEL_RETRY_BASE_SECONDS": "0.05", "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "0.5",
                 "UKCANCEL_WORKER_METRICS_PORT": str(metrics_port)}
    pods = {}
    for name, deployment in k8s.deployments().items():
        spec = _pod(buildah, image_root, deployment, overrides)
        if name == "ukcancel-api":
            # The host's network: a free loopback port instead of 0.0.0.0:8000.
            spec["command"][spec["command"].index("--bind") + 1] = f"127.0.0.1:{api_port}"
        pods[name] = buildah.start_pod(name, spec)
    parts = [simulator, *pods.values()]

    _wait(lambda: _answers(f"{sim_url}/_sim/log"), "the simulator", parts)
    _wait(lambda: _answers(f"{api_url}/readyz"), "the API pod's /readyz (a live worker pod)", parts)
    created = buildah.run(["ukcancel", "token", "create", "--user", ASTRO], {"REDIS_URL": redis_url})
    token = next(line.split()[1] for line in created.splitlines() if line.startswith("token:"))
    client = Client(api_url, token, timeout=30)

    # Through the HTTP API ...
    assert client.cancel_products(1001, ["LightCurve"]) == (1, {"LightCurve": CANCELLED_OK})
    # ... and through the command stream, which the stream consumer pod takes.
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    entry = store.xadd("ukcancel:commands", {"token": token, "job_id": "1001", "products": "psf",
                                             "request_id": "pod-test"})

    def accepted() -> str | None:
        for _id, fields in store.xrange("ukcancel:commands:accepted"):
            if fields.get("entry_id") == entry:
                return fields["command_id"]
        dead = store.xrange("ukcancel:deadletter")
        assert not dead, dead
        return None

    command_id = _wait(accepted, "the stream consumer pod to accept the entry", parts)
    assert as_tuple(client.wait(command_id, timeout=30, poll=10)) == (1, {"StandardPos": CANCELLED_OK})

    # The worker pod is a scrape target of its own (a multiprocess directory is not shared across
    # pods): its pool processes' UKSSDC calls, from its emptyDir, on its metrics port.
    scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    calls = sum(sample.value for family in text_string_to_metric_families(scraped) for sample in family.samples
                if sample.name == "ukcancel_ukssdc_calls_total" and sample.labels["endpoint"] == "canceljob.php")
    assert calls == 2, scraped[-2000:]  # the HTTP and the stream cancellation

    # Each pod ran as its spec says (the user, no capabilities, no privilege escalation, a
    # read-only root with only its emptyDirs writable), and none logged an error: gunicorn, for
    # one, only logs it when it cannot make its control socket.
    for name, running in pods.items():
        running.alive()
        errors = [line for line in running.log().splitlines() if "ERROR" in line or "Errno" in line]
        assert not errors, f"{name}: {errors}"
        pid = running.process.pid
        for process in [pid, *(child for child, _uid, _cmd in _descendants(pid))]:
            status = _status(process)
            assert status["Uid"].split() == [str(USER_ID)] * 4 and status["Gid"].split() == [str(USER_ID)] * 4
            assert status["NoNewPrivs"] == "1" and int(status["CapBnd"], 16) == 0 and int(status["CapEff"], 16) == 0
        root_options, types = _root_mount_options(pid)
        assert "ro" in root_options, f"{name}: the root file system is writable"
        assert {path: types.get(path) for path in k8s.empty_dirs(k8s.deployments()[name])} == {
            path: "tmpfs" for path in k8s.empty_dirs(k8s.deployments()[name])
        }
    deploy_report.append(f"Kubernetes pods emulated on the image: three parts started and two cancellations "
                         f"(HTTP, stream) done in {time.monotonic() - started:.0f} s")
