"""A worker's metrics port listens on loopback unless told otherwise; the shipped pod and Compose
layouts, whose Prometheus scrapes over the network, say 0.0.0.0 explicitly."""

from __future__ import annotations

from pathlib import Path

import yaml
from processes import free_port

from ukcancel import metrics
from ukcancel.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses listening on `port`, from /proc/net/tcp (state 0A: LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_the_worker_metrics_port_listens_on_loopback_by_default() -> None:
    settings = Settings()
    assert settings.worker_metrics_address == "127.0.0.1"
    port = free_port()
    metrics.serve_process_metrics(settings, port, settings.worker_metrics_address)
    assert listening_addresses(port) == {"127.0.0.1"}
    assert Settings.from_env({"UKCANCEL_WORKER_METRICS_ADDRESS": "0.0.0.0"}).worker_metrics_address == "0.0.0.0"


def test_the_shipped_network_scraped_layouts_set_the_address_explicitly() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]["environment"]
    assert compose["UKCANCEL_WORKER_METRICS_ADDRESS"] == "0.0.0.0"
    documents = list(yaml.safe_load_all((ROOT / "ops" / "k8s" / "worker-deployment.yaml").read_text()))
    [deployment] = [d for d in documents if d and d.get("kind") == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["UKCANCEL_WORKER_METRICS_ADDRESS"] == "0.0.0.0"
