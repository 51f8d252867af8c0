"""Static checks of the Kubernetes manifests in ops/k8s; no cluster is needed.

- every manifest kustomization.yaml lists validates, strictly (no unknown field), against the
  Kubernetes version KUBERNETES_VERSION with kubernetes-validate's schemas, and broken copies do
  not; yamllint (.yamllint) passes on them and on docker-compose.yml;
- the parts run the commands of ops/Dockerfile and docker-compose.yml, with environment variables
  that are settings of ukcancel/settings.py (checked as the env example and compose file are) and
  values those settings accept; the Secret holds only placeholders;
- pods run as the image's non-root user with no privilege, on a read-only root file system whose
  only writable places are emptyDirs; probes, grace periods, resources, disruption budgets and
  network policies are what the README says.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from k8s_manifests import (
    K8S_DIR,
    KUBERNETES_VERSION,
    KUSTOMIZATION,
    ROOT,
    container,
    deployments,
    documents,
    empty_dirs,
    environment,
    kustomization,
    pod_spec,
    resources,
    selects,
)
from test_deployment_files import (
    NON_SETTING_ENVIRONMENT,
    SETTING_NAMES,
    _check_command,
    _dockerfile_stages,
    _exec_form,
    _seconds,
    _services,
)

from ukcancel.settings import Settings

BIN = Path(sys.executable).parent
PARTS = {"ukcancel-api": "api", "ukcancel-worker": "worker", "ukcancel-stream-consumer": "stream-consumer"}
USER_ID = 10001  # ops/Dockerfile's USER


def _document_ids() -> list[str]:
    return [f"{path.name}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in documents()]


def _quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("100m", "1", "384Mi") as a number of cores or bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?", str(value))
    assert match, f"unexpected quantity {value!r}"
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[match.group(2)]
    return float(match.group(1)) * scale


# -- the files and the schemas ---------------------------------------------------------------------
def test_kustomization_lists_every_manifest_once() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    on_disk = sorted(p.name for p in K8S_DIR.glob("*.y*ml") if p != KUSTOMIZATION)
    assert sorted(listed) == on_disk


def test_resources_are_unique_and_carry_the_app_label() -> None:
    ids = [(doc["kind"], doc["metadata"]["name"]) for _path, doc in documents()]
    assert len(ids) == len(set(ids)), ids
    for _path, doc in documents():
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "ukssdc-cancel", doc["metadata"]
        assert "namespace" not in doc["metadata"], "the namespace is the overlay's (or kubectl -n) choice"


@pytest.mark.parametrize("index", range(len(documents())), ids=_document_ids())
def test_manifest_validates_against_the_kubernetes_version(index: int) -> None:
    _path, doc = documents()[index]
    # Strict: an unknown (misspelled) field is an error. The answer names the schemas used, which
    # must be those of KUBERNETES_VERSION and not an older fallback.
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def _break(doc: dict[str, Any], breakage: str) -> None:
    spec = doc["spec"]["template"]["spec"]
    if breakage == "misspelled probe":
        spec["containers"][0]["livenessProbes"] = spec["containers"][0].pop("livenessProbe")
    elif breakage == "port name as number":
        spec["containers"][0]["ports"][0]["containerPort"] = "http"
    elif breakage == "no selector":
        del doc["spec"]["selector"]
    else:
        spec["securityContext"]["runAsNonRoot"] = "yes"


@pytest.mark.parametrize("breakage", ["misspelled probe", "port name as number", "no selector", "runAsNonRoot a string"])
def test_a_broken_manifest_fails_validation(breakage: str) -> None:
    doc = copy.deepcopy(deployments()["ukcancel-api"])
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # intact: passes
    _break(doc, breakage)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = BIN / "yamllint"
    assert binary.exists(), f"{binary} is missing: install the project's test extra"
    return subprocess.run([str(binary), "--strict", "-c", str(ROOT / ".yamllint"), *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


def test_yamllint_passes_on_the_manifests_and_the_compose_file() -> None:
    result = _yamllint(K8S_DIR, ROOT / "docker-compose.yml", ROOT / ".yamllint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_rejects_a_duplicate_key(tmp_path: Path) -> None:
    text = (K8S_DIR / "configmap.yaml").read_text()
    broken = tmp_path / "configmap.yaml"
    broken.write_text(text + "  UKSSDC_BASE_URL: https://example.invalid\n")  # a second data key
    assert yaml.safe_load(broken.read_text())  # PyYAML takes it silently
    assert _yamllint(broken).returncode != 0


# -- what the parts run, with which settings -----------------------------------------------------
def test_the_parts_run_the_image_commands() -> None:
    assert set(deployments()) == set(PARTS)
    services = _services()
    dockerfile_cmd = _exec_form([i for i in _dockerfile_stages()[-1] if i.keyword == "CMD"][0])
    for name, part in PARTS.items():
        command = container(deployments()[name])["command"]
        _check_command(command, f"ops/k8s {name}")
        assert command == [str(arg) for arg in services[part]["command"]], f"{name} differs from compose {part}"
        assert "args" not in container(deployments()[name])
    assert container(deployments()["ukcancel-api"])["command"] == dockerfile_cmd


def test_the_image_is_the_project_version_without_a_registry_host() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, deployment in deployments().items():
        assert container(deployment)["image"] == f"ukssdc-cancel:{version}", name
        assert container(deployment)["imagePullPolicy"] == "IfNotPresent", name


def test_manifests_set_only_real_settings() -> None:
    configmap = resources("ConfigMap")["ukcancel-settings"]["data"]
    secret = resources("Secret")["ukcancel-redis"]["stringData"]
    named = [*configmap, *secret]
    for deployment in deployments().values():
        named += [entry["name"] for entry in container(deployment).get("env", [])]
    for variable in named:
        assert variable in SETTING_NAMES or variable in NON_SETTING_ENVIRONMENT, (
            f"ops/k8s sets {variable}, which is not a setting of ukcancel/settings.py"
        )


def test_every_part_gets_a_valid_configuration_with_redis() -> None:
    for name, deployment in deployments().items():
        variables = environment(deployment)
        assert {"REDIS_URL", "CELERY_BROKER_URL", "UKSSDC_BASE_URL"} <= set(variables), name
        # The multiprocess directory must exist where the settings are read; here it does not.
        variables.pop("PROMETHEUS_MULTIPROC_DIR", None)
        settings = Settings.from_env(variables)
        assert not settings.embedded, name


def test_the_secret_holds_placeholders_only() -> None:
    secret = resources("Secret")["ukcancel-redis"]
    assert "data" not in secret, "no base64 values: everything in the file is visible as a placeholder"
    assert set(secret["stringData"]) == {"REDIS_URL", "CELERY_BROKER_URL"}
    for variable, value in secret["stringData"].items():
        parts = urlsplit(value)
        assert "REPLACE-ME" in value, variable
        # .invalid never resolves: an unreplaced placeholder cannot reach any server.
        assert parts.hostname and parts.hostname.endswith(".invalid"), variable
    configmap = resources("ConfigMap")["ukcancel-settings"]["data"]
    assert not {"REDIS_URL", "CELERY_BROKER_URL", "UKCANCEL_TOKEN"} & set(configmap), "secrets belong in the Secret"


def test_service_links_are_off_where_they_would_look_like_settings() -> None:
    # Kubernetes gives each pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, ... for every Service of
    # the namespace unless enableServiceLinks is false; for ukcancel-api these start UKCANCEL_.
    prefixes = {name.upper().replace("-", "_") for name in resources("Service")}
    assert any(prefix.startswith("UKCANCEL_") for prefix in prefixes)
    for name, deployment in deployments().items():
        assert pod_spec(deployment)["enableServiceLinks"] is False, name
        assert pod_spec(deployment)["automountServiceAccountToken"] is False, name


# -- security --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PARTS)
def test_pods_run_as_the_non_root_user_without_privileges(name: str) -> None:
    deployment = deployments()[name]
    pod = pod_spec(deployment)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == USER_ID and pod["runAsGroup"] == USER_ID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(deployment)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert "privileged" not in security and "runAsUser" not in security
    dockerfile_user = [i.arguments for i in _dockerfile_stages()[-1] if i.keyword == "USER"][-1]
    assert dockerfile_user == f"{USER_ID}:{USER_ID}"


@pytest.mark.parametrize("name", PARTS)
def test_writable_places_are_empty_dirs(name: str) -> None:
    deployment = deployments()[name]
    mounts = container(deployment).get("volumeMounts", [])
    assert [mount["mountPath"] for mount in mounts] == empty_dirs(deployment), "only emptyDir volumes"
    assert "/tmp" in empty_dirs(deployment)
    for volume in pod_spec(deployment)["volumes"]:
        assert volume["emptyDir"].get("sizeLimit"), f"{name}: emptyDir {volume['name']} needs a sizeLimit"
    multiproc = environment(deployment).get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc is not None:
        assert multiproc in empty_dirs(deployment), f"{name}: {multiproc} must be an emptyDir of its own"
    # The compose services that set the multiprocess directory (api, worker) set it here too.
    assert (multiproc is not None) == ("PROMETHEUS_MULTIPROC_DIR" in (_services()[PARTS[name]].get("environment") or {}))


@pytest.mark.parametrize("name", PARTS)
def test_resources_are_requested_and_limited(name: str) -> None:
    limits = container(deployments()[name])["resources"]
    for resource in ("cpu", "memory"):
        request, limit = _quantity(limits["requests"][resource]), _quantity(limits["limits"][resource])
        assert 0 < request <= limit, (name, resource)


# -- the API ----------------------------------------------------------------------------------------
def test_api_probes_and_service() -> None:
    api = deployments()["ukcancel-api"]
    (port,) = container(api)["ports"]
    assert port == {"name": "http", "containerPort": 8000}
    liveness, readiness = container(api)["livenessProbe"], container(api)["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    for probe in (liveness, readiness):
        assert probe["timeoutSeconds"] < probe["periodSeconds"]
    service = resources("Service")["ukcancel-api"]
    assert selects({"matchLabels": service["spec"]["selector"]}, api["spec"]["template"]["metadata"]["labels"])
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]
    assert service["spec"]["type"] == "ClusterIP", "reach it through a TLS ingress, not a node port"


def test_api_gets_a_grace_period_for_open_requests() -> None:
    grace = pod_spec(deployments()["ukcancel-api"])["terminationGracePeriodSeconds"]
    assert grace == _seconds(_services()["api"]["stop_grace_period"])


# -- workers ----------------------------------------------------------------------------------------
def test_worker_is_scalable_and_stops_warmly() -> None:
    worker = deployments()["ukcancel-worker"]
    pod = pod_spec(worker)
    assert worker["spec"]["replicas"] >= 1
    assert "hostname" not in pod and "hostNetwork" not in pod, "each pod must be a Celery node of its own"
    assert not [p for p in container(worker).get("ports", []) if "hostPort" in p]
    settings = Settings.from_env({k: v for k, v in environment(worker).items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    one_call = settings.ukssdc_connect_timeout_seconds + settings.ukssdc_timeout_seconds
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > one_call and grace >= _seconds(_services()["worker"]["stop_grace_period"])


def test_workers_are_recreated_on_an_upgrade() -> None:
    # Two releases' workers never share Redis (docs/operators/high-availability.md, "Upgrades").
    assert deployments()["ukcancel-worker"]["spec"]["strategy"] == {"type": "Recreate"}


def test_the_sentinel_overlay_sets_valid_sentinel_settings_and_opens_their_port() -> None:
    overlay = K8S_DIR / "sentinel"
    kustomization_doc = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert "../" in kustomization_doc["resources"]
    listed = [*kustomization_doc["resources"][1:], *(p["path"] for p in kustomization_doc["patches"])]
    assert sorted(listed) == sorted(p.name for p in overlay.glob("*.yaml") if p.name != "kustomization.yaml")
    patch = yaml.safe_load((overlay / "configmap-sentinel.yaml").read_text())
    assert patch["metadata"]["name"] == "ukcancel-settings"
    secret = yaml.safe_load((overlay / "secret-sentinel.yaml").read_text())
    assert secret["metadata"]["name"] == "ukcancel-redis"
    settings = Settings.from_env({**resources("ConfigMap")["ukcancel-settings"]["data"], **patch["data"],
                                  **resources("Secret")["ukcancel-redis"]["stringData"], **secret["stringData"]})
    assert settings.sentinel and settings.redis_min_replicas == 1
    assert settings.effective_broker_url.startswith("sentinel://"), "the broker follows the master too"
    policy = yaml.safe_load((overlay / "networkpolicy-sentinel.yaml").read_text())
    ports = {int(p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {port for _host, port in settings.redis_sentinels} == {26379}


def test_disruption_budgets_leave_room_to_drain() -> None:
    budgets = resources("PodDisruptionBudget")
    for name in ("ukcancel-api", "ukcancel-worker"):
        deployment = deployments()[name]
        budget = budgets[name]["spec"]
        assert selects(budget["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        replicas = deployment["spec"]["replicas"]
        if "minAvailable" in budget:
            # minAvailable equal to replicas would block every node drain.
            assert 1 <= budget["minAvailable"] < replicas, name
        else:
            assert 1 <= budget["maxUnavailable"] < replicas, name


# -- network policies -------------------------------------------------------------------------------
def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(port.get("protocol", "TCP"), int(port["port"])) for port in rule.get("ports", [])}


def test_egress_allows_only_dns_redis_the_broker_and_https() -> None:
    policy = resources("NetworkPolicy")["ukcancel"]["spec"]
    for name, deployment in deployments().items():
        assert selects(policy["podSelector"], deployment["spec"]["template"]["metadata"]["labels"]), name
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    rules = policy["egress"]
    assert all(rule.get("ports") for rule in rules), "an egress rule without ports opens every port"
    allowed = set().union(*map(_ports, rules))
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 5672), ("TCP", 443)}
    (dns,) = [rule for rule in rules if ("UDP", 53) in _ports(rule)]
    assert dns["to"], "DNS only to the cluster DNS"
    # What the configuration names is reachable: the UKSSDC and the placeholders' Redis port.
    settings = {**resources("ConfigMap")["ukcancel-settings"]["data"], **resources("Secret")["ukcancel-redis"]["stringData"]}
    for variable, default_port in (("UKSSDC_BASE_URL", 443), ("REDIS_URL", 6379), ("CELERY_BROKER_URL", 6379)):
        assert ("TCP", urlsplit(settings[variable]).port or default_port) in allowed, variable


def test_ingress_reaches_only_the_api_port() -> None:
    policies = resources("NetworkPolicy")
    assert policies["ukcancel"]["spec"].get("ingress", []) == [], "the default policy admits nothing"
    api_policy = policies["ukcancel-api-ingress"]["spec"]
    assert api_policy["policyTypes"] == ["Ingress"]
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments().items()}
    assert [name for name in labels if selects(api_policy["podSelector"], labels[name])] == ["ukcancel-api"]
    assert set().union(*map(_ports, api_policy["ingress"])) == {("TCP", 8000)}
    # The one other way in: Prometheus to the workers' metrics port, and nothing else of theirs.
    metrics_policy = policies["ukcancel-worker-metrics-ingress"]["spec"]
    assert [name for name in labels if selects(metrics_policy["podSelector"], labels[name])] == ["ukcancel-worker"]
    assert set().union(*map(_ports, metrics_policy["ingress"])) == {("TCP", 9101)}
    worker_port = environment(deployments()["ukcancel-worker"])["UKCANCEL_WORKER_METRICS_PORT"]
    assert [p["containerPort"] for p in container(deployments()["ukcancel-worker"])["ports"]] == [int(worker_port)]
    assert set(policies) == {"ukcancel", "ukcancel-api-ingress", "ukcancel-worker-metrics-ingress"}
