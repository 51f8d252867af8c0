"""Reading ops/k8s: the manifests kustomization.yaml lists, and what a pod of each Deployment gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "ops" / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
# The Kubernetes version the manifests are validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30"


def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def documents() -> list[tuple[Path, dict[str, Any]]]:
    """(file, resource) for every resource of the files kustomization.yaml lists."""
    found = []
    for name in kustomization()["resources"]:
        path = K8S_DIR / name
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _path, doc in documents() if doc["kind"] == kind}


def deployments() -> dict[str, dict[str, Any]]:
    return resources("Deployment")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(deployment)["containers"]
    return only


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (the only kind these manifests use) selects `labels`."""
    assert set(selector) == {"matchLabels"}, f"unexpected selector {selector}"
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def environment(deployment: dict[str, Any]) -> dict[str, str]:
    """The variables the container gets: its envFrom ConfigMaps and Secrets, then its env."""
    configmaps, secrets = resources("ConfigMap"), resources("Secret")
    variables: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        if "configMapRef" in source:
            variables.update(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            variables.update(secrets[source["secretRef"]["name"]]["stringData"])
    for entry in container(deployment).get("env", []):
        variables[entry["name"]] = entry["value"]
    return variables


def empty_dirs(deployment: dict[str, Any]) -> list[str]:
    """The container's mount paths that are emptyDir volumes: its only writable places."""
    volumes = {volume["name"]: volume for volume in pod_spec(deployment).get("volumes", [])}
    return [mount["mountPath"] for mount in container(deployment).get("volumeMounts", [])
            if "emptyDir" in volumes[mount["name"]]]
