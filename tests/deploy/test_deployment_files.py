"""Static checks of the deployment files; no Docker engine and no systemd manager are needed.

- docker-compose.yml validates against the Compose specification's JSON schema (the copy that
  check-jsonschema vendors), and a broken copy does not;
- its structure: a scalable worker, the simulator only in its profile, Redis with an append-only
  file on a named volume and the recommended hash-max-listpack-value, no variable that is not a
  setting (or a documented compose-only one);
- every command (Dockerfile CMD, compose `command:`, systemd `ExecStart=`) names a real
  `ukcancel` subcommand with options it accepts, or runs gunicorn with valid options on the real
  WSGI module;
- ops/Dockerfile copies everything the wheel is built from, and .dockerignore keeps none of it out;
- ops/deploy/ukcancel.env.example lists exactly the variables of `Settings.ENVIRONMENT`, each
  commented-out line with the true default;
- the systemd units read the env file, run as a dedicated user, restart on failure, stop the
  worker warmly, and pass `systemd-analyze verify` where that tool exists.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from ukcancel.cli import main as ukcancel_cli
from ukcancel.settings import PRODUCTION_BASE_URL, Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "ops" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "ops" / "deploy" / "ukcancel.env.example"
SYSTEMD_DIR = ROOT / "ops" / "deploy" / "systemd"
SYSTEMD_UNITS = ("ukcancel-api.service", "ukcancel-worker@.service", "ukcancel-stream-consumer.service")
INSTALL_PREFIX = "/opt/ukcancel/venv/bin/"  # where the units expect the installed wheel's scripts
WSGI_APP = "ukcancel.wsgi:app"
BASE_IMAGES = {"python:3.11-slim"}

# Variables docker-compose.yml may interpolate (`${VAR}`) that are not settings, with what they
# are; each must also be explained in a comment of docker-compose.yml. None so far.
COMPOSE_ONLY_VARIABLES: dict[str, str] = {}
# Environment variables the compose services may set besides settings: read by prometheus-client
# itself (whether or not Settings also lists it).
NON_SETTING_ENVIRONMENT = {"PROMETHEUS_MULTIPROC_DIR"}
# The services that run the ukcancel image.
UKCANCEL_SERVICES = ("api", "worker", "stream-consumer", "simulator")
# Profile `ha`: a Redis master, its replica and three Sentinels (docs/operators/high-availability.md).
HA_SERVICES = ("redis-master", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")

SETTING_NAMES = [variable for variable, _field, _parse in Settings.ENVIRONMENT]


# -- helpers -----------------------------------------------------------------------------------
def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, Any]:
    return _compose()["services"]


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _seconds(duration: str | int | float) -> float:
    """A Compose duration ("60s", "1m30s") or a systemd time span ("90", "90s", "2min") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    text = duration.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(us|ms|sec|min|s|m|h)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _interpolated_variables(text: str) -> set[str]:
    """Names Compose would interpolate in `text` (`$$` is a literal dollar)."""
    text = text.replace("$$", "")
    braced = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)
    bare = re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text)
    return set(braced) | set(bare)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def _run_environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as `docker compose` runs it with nothing set in the shell: each
    ``${VAR:-default}`` (or ``${VAR-default}``, ``${VAR}``) becomes its default, or empty."""
    return {key: _interpolated(value) for key, value in _environment(service).items()}


def _interpolated(value: str) -> str:
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    binary = BIN / "check-jsonschema"
    assert binary.exists(), f"{binary} is missing: install the project's test extra"
    return subprocess.run(
        [str(binary), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# Dockerfile --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


def _dockerfile_stages() -> list[list[Instruction]]:
    """The instructions of ops/Dockerfile per build stage (line continuations joined)."""
    stages: list[list[Instruction]] = []
    logical, start = "", 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        logical = ""
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"ops/Dockerfile:{start}: {instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    assert not logical, "ops/Dockerfile ends inside a continued line"
    return stages


def _exec_form(instruction: Instruction) -> list[str]:
    try:
        argv = json.loads(instruction.arguments)
    except json.JSONDecodeError:
        pytest.fail(f"ops/Dockerfile:{instruction.line}: {instruction.keyword} must use the exec (JSON) form "
                    "so the process gets SIGTERM itself")
    assert isinstance(argv, list) and all(isinstance(part, str) for part in argv)
    return argv


def _copy_sources(instruction: Instruction) -> list[str]:
    parts = [part for part in shlex.split(instruction.arguments) if not part.startswith("--")]
    assert len(parts) >= 2, f"ops/Dockerfile:{instruction.line}: COPY needs a source and a destination"
    return parts[:-1]


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, pattern) in order; Docker's rules: anchored at the root, `**` any depth."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if exception else line).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exception, re.compile(regex)))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    ignored = False
    for exception, regex in rules:
        if any(regex.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            ignored = not exception
    return ignored


# commands ----------------------------------------------------------------------------------------
def _check_gunicorn(args: list[str], where: str) -> Any:
    """Parse gunicorn's options as gunicorn does; the app must be the real WSGI module's `app`."""
    from gunicorn.config import Config

    config = Config()
    try:
        namespace = config.parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: gunicorn rejects its arguments {args}")
    for key, value in vars(namespace).items():
        if key != "args" and value is not None:
            config.set(key.lower(), value)
    assert namespace.args == [WSGI_APP], f"{where}: gunicorn must serve {WSGI_APP}, not {namespace.args}"
    assert config.worker_class_str == "gevent", f"{where}: long polls need the gevent worker class"
    assert config.worker_class.__name__ == "GeventWorker"
    assert config.worker_connections >= 1000, f"{where}: a worker must hold a thousand long polls"
    return config


def _check_ukcancel(args: list[str], where: str) -> str:
    """`args` (after `ukcancel`) name a real subcommand and its options parse; returns its name."""
    assert args, f"{where}: `ukcancel` without a subcommand"
    name, options = args[0], args[1:]
    commands = ukcancel_cli.commands
    assert name in commands, (
        f"{where}: `ukcancel {name}` is not a subcommand (the CLI has: {', '.join(sorted(commands))})"
    )
    try:
        commands[name].make_context(name, list(options))
    except click.ClickException as exc:
        pytest.fail(f"{where}: `ukcancel {' '.join(args)}` does not parse: {exc.format_message()}")
    return name


def _check_command(argv: list[str], where: str) -> None:
    program = posixpath.basename(argv[0])
    if program == "ukcancel":
        _check_ukcancel(argv[1:], where)
    elif program == "gunicorn":
        _check_gunicorn(argv[1:], where)
    else:
        pytest.fail(f"{where}: runs {argv[0]!r}, neither `ukcancel` nor `gunicorn`")


# systemd -----------------------------------------------------------------------------------------
def _unit(name: str) -> dict[str, list[str]]:
    """`Key -> values` of a unit file's [Service] and [Unit] sections (a key may repeat)."""
    values: dict[str, list[str]] = {}
    for raw in (SYSTEMD_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


# -- (a) the Compose schema ----------------------------------------------------------------------
def test_compose_file_matches_the_compose_specification() -> None:
    result = _schema_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "breakage",
    ["misspelled key", "bad depends_on condition", "ports not a list", "top-level typo"],
)
def test_a_broken_compose_file_fails_the_schema_check(tmp_path: Path, breakage: str) -> None:
    document = _compose()
    # The untouched document, written back out, passes: what fails below is the breakage only.
    intact = tmp_path / "intact.yml"
    intact.write_text(yaml.safe_dump(document, sort_keys=False))
    assert _schema_check(intact).returncode == 0

    services = document["services"]
    if breakage == "misspelled key":
        services["worker"]["stop_grace_periode"] = services["worker"].pop("stop_grace_period")
    elif breakage == "bad depends_on condition":
        services["api"]["depends_on"]["redis"]["condition"] = "service_ready"
    elif breakage == "ports not a list":
        services["api"]["ports"] = "8000:8000"
    else:
        document["service"] = document.pop("services")
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    result = _schema_check(broken)
    assert result.returncode != 0, f"the schema check accepted a compose file with a {breakage}"


# -- (b) the Compose structure -------------------------------------------------------------------
def test_compose_file_has_no_obsolete_version_key() -> None:
    assert "version" not in _compose()


def test_all_services_are_there() -> None:
    assert set(_services()) == {"redis", *UKCANCEL_SERVICES, *HA_SERVICES}


def test_worker_is_scalable() -> None:
    services = _services()
    worker = services["worker"]
    for key in ("container_name", "ports", "hostname"):
        # `--scale worker=N`: a fixed name or host port clashes, and a fixed hostname would give
        # every replica the same Celery node name (and heartbeat).
        assert key not in worker, f"worker must not set {key}"
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: container_name stops `docker compose -p` side by side"


def test_worker_stops_warmly() -> None:
    grace = _seconds(_services()["worker"]["stop_grace_period"])
    defaults = Settings()
    one_call = defaults.ukssdc_connect_timeout_seconds + defaults.ukssdc_timeout_seconds
    assert grace >= 60 and grace > one_call


def test_simulator_only_in_its_profile() -> None:
    services = _services()
    assert services["simulator"].get("profiles") == ["simulator"]
    for name, service in services.items():
        if name in HA_SERVICES:
            assert service.get("profiles") == ["ha"], f"{name} belongs to profile ha"
        elif name != "simulator":
            assert not service.get("profiles"), f"{name} must start without a profile"
            assert "simulator" not in (service.get("depends_on") or {}), (
                f"{name} must not depend on the simulator: it exists only with --profile simulator"
            )
    argv = _argv(services["simulator"]["command"])
    assert argv[:2] == ["ukcancel", "simulator"]
    assert "--host" in argv and argv[argv.index("--host") + 1] == "0.0.0.0", "the simulator must listen on 0.0.0.0"


def test_ha_profile_is_a_master_a_replica_and_three_sentinels_that_fsync_every_write() -> None:
    services = _services()
    master, replica = (_argv(services[name]["command"]) for name in ("redis-master", "redis-replica"))
    for argv in (master, replica):
        assert argv[0] == "redis-server"
        assert argv[argv.index("--appendfsync") + 1] == "always" and argv[argv.index("--appendonly") + 1] == "yes"
    assert replica[replica.index("--replicaof") + 1:replica.index("--replicaof") + 3] == ["redis-master", "6379"]
    sentinels = [services[f"sentinel-{n}"] for n in (1, 2, 3)]
    assert len({s["hostname"] for s in sentinels}) == 3
    script = sentinels[0]["command"][0]
    assert "sentinel monitor ukcancel redis-master 6379 2" in script and "--sentinel" in script
    # The ukcancel services take the Sentinel settings from the shell; empty means the plain Redis.
    env = services["api"]["environment"]
    for variable in ("UKCANCEL_REDIS_SENTINELS", "UKCANCEL_REDIS_SENTINEL_MASTER", "UKCANCEL_REDIS_MIN_REPLICAS"):
        assert variable in env, variable
    text = COMPOSE_FILE.read_text()
    assert "docker compose --profile ha --profile simulator up" in text
    assert "docker compose kill -s SIGKILL redis-master" in text
    configured = Settings.from_env({
        "REDIS_URL": env["REDIS_URL"], "UKCANCEL_REDIS_SENTINELS": "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379",
        "UKCANCEL_REDIS_SENTINEL_MASTER": "ukcancel", "UKCANCEL_REDIS_MIN_REPLICAS": "1",
    })
    assert configured.effective_broker_url.startswith("sentinel://sentinel-1:26379/0;")


def test_the_image_label_is_the_package_version() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "ARG UKCANCEL_VERSION" in dockerfile
    assert 'org.opencontainers.image.version="${UKCANCEL_VERSION}"' in dockerfile
    build = (ROOT / "ops" / "image" / "build-image.sh").read_text()
    assert '--build-arg "UKCANCEL_VERSION=$version"' in build and '["project"]["version"]' in build


def test_redis_keeps_an_append_only_file_on_a_named_volume() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    argv = _argv(redis["command"])
    assert argv[0] == "redis-server"
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes", "Redis needs --appendonly yes"
    named = [v.split(":", 1)[0] for v in redis["volumes"] if isinstance(v, str) and v.endswith(":/data")]
    assert named and named[0] in (compose.get("volumes") or {}), "Redis /data must be a named volume"
    assert "redis-cli ping" in " ".join(_argv(redis["healthcheck"]["test"]))
    assert "ports" not in redis, "Redis is for the services on the project network only"


def test_redis_keeps_command_records_compact() -> None:
    """The recommended hash-max-listpack-value: records with values over 64 bytes stay listpacks."""
    argv = _argv(_compose()["services"]["redis"]["command"])
    assert "--hash-max-listpack-value" in argv, "Redis should run with the recommended --hash-max-listpack-value"
    assert int(argv[argv.index("--hash-max-listpack-value") + 1]) >= 1024


def test_ukcancel_services_share_one_image_built_from_ops_dockerfile() -> None:
    services = _services()
    images = {services[name]["image"] for name in UKCANCEL_SERVICES}
    assert len(images) == 1
    for name in UKCANCEL_SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_ukcancel_services_wait_for_a_healthy_redis() -> None:
    services = _services()
    for name in ("api", "worker", "stream-consumer"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        environment = _environment(services[name])
        redis_url = urlsplit(environment["REDIS_URL"])
        assert redis_url.scheme == "redis" and redis_url.hostname == "redis", name
        assert redis_url.password is None, f"{name}: no secret in docker-compose.yml"


def test_api_publishes_8000_and_probes_healthz() -> None:
    api = _services()["api"]
    targets = []
    for port in api["ports"]:
        targets.append(int(port["target"]) if isinstance(port, dict) else int(str(port).rsplit(":", 1)[-1]))
    assert targets == [8000]
    probe = " ".join(_argv(api["healthcheck"]["test"]))
    assert "urllib" in probe and "http://127.0.0.1:8000/healthz" in probe
    assert "curl" not in probe, "python:3.11-slim has no curl"


def test_prometheus_multiprocess_directory_is_a_tmpfs() -> None:
    services = _services()
    for name in ("api", "worker"):
        directory = _environment(services[name])["PROMETHEUS_MULTIPROC_DIR"]
        tmpfs = services[name].get("tmpfs") or []
        tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
        assert directory in [entry.split(":", 1)[0] for entry in tmpfs], name


def test_compose_sets_and_interpolates_only_real_settings() -> None:
    compose = _compose()
    services = compose["services"]
    for name in UKCANCEL_SERVICES:
        for variable in _environment(services[name]):
            assert variable in SETTING_NAMES or variable in NON_SETTING_ENVIRONMENT, (
                f"{name} sets {variable}, which is not a setting of ukcancel/settings.py"
            )
    used = set().union(*(_interpolated_variables(text) for text in _strings(compose)))
    unknown = used - set(SETTING_NAMES) - set(COMPOSE_ONLY_VARIABLES)
    assert not unknown, f"docker-compose.yml interpolates {sorted(unknown)}: not settings nor documented"
    comments = "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if line.lstrip().startswith("#"))
    for variable in COMPOSE_ONLY_VARIABLES:
        assert variable in comments, f"{variable} is not explained in docker-compose.yml"


def test_ukssdc_base_url_defaults_to_production_and_can_be_overridden() -> None:
    for name in ("api", "worker", "stream-consumer"):
        value = _environment(_services()[name])["UKSSDC_BASE_URL"]
        assert value == "${UKSSDC_BASE_URL:-" + PRODUCTION_BASE_URL + "}", name
    assert "UKSSDC_BASE_URL=http://simulator:8090 docker compose --profile simulator up" in COMPOSE_FILE.read_text()


def test_images_name_no_registry_host() -> None:
    for name, service in _services().items():
        assert "/" not in service["image"], f"{name}: image {service['image']!r} names a registry or namespace"


# -- (c) commands and the Dockerfile -------------------------------------------------------------
def test_the_console_script_is_ukcancel() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ukcancel"] == "ukcancel.cli:main"


def test_the_wsgi_module_exists_and_defines_app() -> None:
    module, _, attribute = WSGI_APP.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} is not importable"
    tree = ast.parse(Path(spec.origin).read_text())
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert attribute in assigned, f"{module} defines no top-level {attribute}"


def test_dockerfile_default_command_serves_the_api_with_gunicorn_gevent() -> None:
    final = _dockerfile_stages()[-1]
    assert not [i for i in final if i.keyword == "ENTRYPOINT"], "the image's commands are given whole, by CMD"
    commands = [i for i in final if i.keyword == "CMD"]
    assert len(commands) == 1
    argv = _exec_form(commands[0])
    assert argv[0] == "gunicorn"
    config = _check_gunicorn(argv[1:], "ops/Dockerfile CMD")
    assert config.address == [("0.0.0.0", 8000)]
    assert config.timeout == 90
    exposed = {port for i in final if i.keyword == "EXPOSE" for port in i.arguments.split()}
    assert exposed == {"8000"}


@pytest.mark.parametrize("service", UKCANCEL_SERVICES)
def test_compose_commands_are_real(service: str) -> None:
    command = _services()[service].get("command")
    assert command, f"{service} has no command"
    _check_command(_argv(command), f"docker-compose.yml {service}")


def test_compose_commands_run_the_intended_parts() -> None:
    services = _services()
    assert _argv(services["worker"]["command"]) == ["ukcancel", "worker"]
    assert _argv(services["stream-consumer"]["command"]) == ["ukcancel", "stream-consumer"]
    assert _argv(services["api"]["command"]) == _exec_form(
        [i for i in _dockerfile_stages()[-1] if i.keyword == "CMD"][0]
    )


def test_dockerfile_stages_and_user() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "build the wheel in a builder stage"
    for stage in stages:
        image = stage[0].arguments.split()[0]
        assert image in BASE_IMAGES or image in {s[0].arguments.split()[-1] for s in stages}, image
    final = stages[-1]
    assert final[0].arguments.split()[0] == "python:3.11-slim"
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    environment = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", environment)


def test_dockerfile_installs_a_built_wheel_without_test_extras() -> None:
    stages = _dockerfile_stages()
    builder_runs = [i.arguments for i in stages[0] if i.keyword == "RUN"]
    assert any(re.search(r"\bpip wheel\b.*\s\.(\s|$)", run) for run in builder_runs), "build a wheel of ."
    final_runs = " ".join(i.arguments for i in stages[-1] if i.keyword == "RUN")
    assert "pip install" in final_runs
    assert not re.search(r"(\s-e\s|--editable)", final_runs), "the image must not hold an editable install"
    assert "[test]" not in final_runs and "pytest" not in final_runs, "no test dependencies in the image"
    assert not [i for i in stages[-1] if i.keyword in ("COPY", "ADD") and "--from" not in i.arguments], (
        "the runtime stage takes nothing from the build context, only the builder's wheels"
    )


def _package_directories() -> list[str]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools.get("package-dir", {})
    directories = []
    for package in setuptools["packages"]:
        prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            directories.append(package.replace(".", "/"))
        else:
            directories.append(posixpath.join(mapping[prefix], *package[len(prefix) :].split(".")[1:]))
    return directories


def test_dockerfile_copies_everything_the_wheel_is_built_from() -> None:
    builder = _dockerfile_stages()[0]
    sources = [
        posixpath.normpath(source).rstrip("/")
        for i in builder
        if i.keyword == "COPY"
        for source in _copy_sources(i)
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = ["pyproject.toml", *([project["readme"]] if isinstance(project.get("readme"), str) else [])]
    needed += _package_directories()
    for path in needed:
        assert any(path == s or path.startswith(s + "/") for s in sources), f"ops/Dockerfile does not COPY {path}"
    rules = _dockerignore_rules()
    for source in sources:
        assert (ROOT / source).exists(), f"ops/Dockerfile copies {source}, which the repository does not have"
        assert not _ignored(source, rules), f".dockerignore keeps {source} out of the build context"
        files = [ROOT / source] if (ROOT / source).is_file() else sorted((ROOT / source).rglob("*"))
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if file.is_file() and file.suffix in (".py", ".json", ".toml", ".md"):
                assert not _ignored(relative, rules), f".dockerignore keeps {relative} out of the image"


def test_dockerignore_keeps_out_git_and_environments() -> None:
    rules = _dockerignore_rules()
    for path in (".git/HEAD", ".venv/bin/python", ".venv-dev/bin/python", "service/__pycache__/app.cpython-311.pyc",
                 "tests/conftest.py", ".env"):
        assert _ignored(path, rules), f".dockerignore lets {path} into the build context"


# -- (d) the env example -------------------------------------------------------------------------
def _env_example() -> list[tuple[bool, str, str]]:
    """(active, name, value) of each `NAME=value` / `#NAME=value` line of the example."""
    entries = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            entries.append((match.group(1) is None, match.group(2), match.group(3).strip()))
    return entries


def test_env_example_lists_exactly_the_settings() -> None:
    names = [name for _active, name, _value in _env_example()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"
    missing = sorted(set(SETTING_NAMES) - set(names))
    extra = sorted(set(names) - set(SETTING_NAMES))
    assert not missing, f"settings missing from {ENV_EXAMPLE.name}: {missing}"
    assert not extra, f"{ENV_EXAMPLE.name} lists variables that are not settings: {extra}"


def test_env_example_shows_the_true_defaults() -> None:
    parsers = {variable: (field, parse) for variable, field, parse in Settings.ENVIRONMENT}
    defaults = Settings()
    for active, name, value in _env_example():
        if active:
            continue
        field, parse = parsers[name]
        default = getattr(defaults, field)
        if value == "":
            assert not default, f"{name} is shown empty but defaults to {default!r}"
        else:
            assert parse(value) == default, f"{name}={value} but the default is {default!r}"


def test_env_example_is_a_valid_configuration_with_redis() -> None:
    active = {name: value for is_active, name, value in _env_example() if is_active}
    assert "REDIS_URL" in active, "the deployment needs REDIS_URL set (unset means the embedded demo store)"
    settings = Settings.from_env(active)
    assert not settings.embedded


# -- the systemd units ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", SYSTEMD_UNITS)
def test_systemd_unit_basics(name: str) -> None:
    unit = _unit(name)
    assert unit["EnvironmentFile"] == ["/etc/ukcancel/ukcancel.env"]
    assert unit["User"] == ["ukcancel"] and unit["Group"] == ["ukcancel"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["WantedBy"] == ["multi-user.target"]
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].startswith(INSTALL_PREFIX), f"{name}: ExecStart runs {argv[0]}, not the installed wheel's script"
    _check_command(argv, f"{name} ExecStart")


def test_systemd_units_run_the_intended_parts() -> None:
    assert shlex.split(_unit("ukcancel-worker@.service")["ExecStart"][0])[1] == "worker"
    assert shlex.split(_unit("ukcancel-stream-consumer.service")["ExecStart"][0])[1:] == ["stream-consumer"]
    assert shlex.split(_unit("ukcancel-api.service")["ExecStart"][0])[-1] == WSGI_APP


def test_systemd_worker_is_a_template_with_a_warm_shutdown() -> None:
    unit = _unit("ukcancel-worker@.service")
    argv = shlex.split(unit["ExecStart"][0])
    hostnames = [a for a in argv if a.startswith(("--hostname=", "-n"))]
    assert hostnames and "%i" in hostnames[0], "each instance needs its own Celery node name"
    assert unit["KillSignal"] == ["SIGTERM"]
    # Only the main process gets SIGTERM: prefork pool processes reset SIGTERM to its default
    # action and would die mid-task.
    assert unit["KillMode"] == ["mixed"]
    compose_grace = _seconds(_services()["worker"]["stop_grace_period"])
    assert _seconds(unit["TimeoutStopSec"][0]) >= compose_grace


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name /opt/ukcancel/venv/bin/...; verify them against this environment's scripts.
    for name in SYSTEMD_UNITS:
        text = (SYSTEMD_DIR / name).read_text().replace(INSTALL_PREFIX, f"{BIN}/")
        (tmp_path / name).write_text(text)
    (tmp_path / "ukcancel-worker@1.service").write_text((tmp_path / "ukcancel-worker@.service").read_text())
    units = ["ukcancel-api.service", "ukcancel-worker@1.service", "ukcancel-stream-consumer.service"]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[str(tmp_path / unit) for unit in units]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output and "ignoring" not in output, output
