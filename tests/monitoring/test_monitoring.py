"""ops/monitoring: the alert rules pass promtool (check and unit tests), the scrape configuration is
valid, and every metric the dashboard and the rules query exists in a real scrape of the service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ukcancel.assemble import create_api, create_runtime
from ukcancel.command import CancelCommand
from ukcancel.settings import Settings
from ukcancel.simulator import Fault, SimulatorServer
from ukcancel.worker.embedded import EmbeddedWorker

MONITORING = Path(__file__).resolve().parents[2] / "ops" / "monitoring"
ALERTS = {"UkcancelBreakerOpen", "UkcancelNoLiveWorker", "UkcancelOldestWaitingTooOld",
          "UkcancelTransportFailuresHigh", "UkcancelUkssdc5xxRate"}
# PromQL words that are not metric names: functions, operators, modifiers.
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by",
                "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "absent", "clamp_min", "topk"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: .ci/run installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)


def test_alert_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_scrape_configuration_is_valid_and_loads_the_rules() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ukcancel-api", "ukcancel-worker"}
    assert jobs["ukcancel-worker"]["dns_sd_configs"][0]["port"] == 9101  # docker-compose.yml's worker port


def test_every_alert_named_in_the_issue_exists_and_has_a_unit_test() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert names == ALERTS
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == ALERTS  # each alert is shown to fire at least once


def queries() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers outside label sets, strings, ranges and groupings."""
    stripped = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", stripped)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped))
    assert words - PROMQL_WORDS, expr
    unknown = {w for w in words - PROMQL_WORDS if not w.startswith("ukcancel_")}
    assert not unknown, f"{expr}: {unknown} are neither PromQL nor ukcancel metrics"
    return words - PROMQL_WORDS


@pytest.fixture
def scraped_names(simulator: SimulatorServer) -> set[str]:
    """Sample names of a real /metrics after activity: calls (one 503), a retry, results, requests."""
    settings = Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05, retry_max_delay_seconds=0.2,
                        fleet_rate_per_second=50)
    runtime = create_runtime(settings)
    client = create_api(runtime=runtime).test_client()
    token, _ = runtime.tokens.create("astro@example.org")
    simulator.state.add_faults(Fault("http503"))
    commands = [CancelCommand(job_id=1001, user_id="astro@example.org", products=["LightCurve"])]
    with EmbeddedWorker(runtime):
        runtime.schedule.enqueue(commands)
        runtime.registry.wait_terminal(commands[0].id, 20)
        client.get(f"/v1/cancellations/{commands[0].id}", headers={"Authorization": f"Bearer {token}"})
    text = client.get("/metrics").get_data(as_text=True)
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_metric_the_dashboard_and_rules_query_is_in_a_real_scrape(scraped_names: set[str]) -> None:
    used = set().union(*map(metric_names, queries()))
    assert len(used) >= 20  # the extraction found the queries' metrics, not nothing
    missing = used - scraped_names
    assert not missing, f"queried but not served: {sorted(missing)}"


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    assert {"datasource"} <= {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
