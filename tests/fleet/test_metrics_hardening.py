"""/metrics under a scrape flood: the costly figures are computed once per cache period for the
whole fleet (O(1) in records a scrape), the fleet pause is live, and UKCANCEL_METRICS_TOKEN
restricts the endpoint. Real Redis."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from ukcancel.assemble import create_api, create_runtime
from ukcancel.command import CancelCommand
from ukcancel.metrics import StoreCollector
from ukcancel.settings import Settings

SCRAPE_TOKEN = "scrape-" + "0123456789abcdef" * 2


def gauge(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not served")


def test_a_scrape_flood_counts_the_records_once_per_period_for_the_fleet(redis_url: str, monkeypatch) -> None:
    settings = Settings(redis_url=redis_url, metrics_cache_seconds=30)
    runtime = create_runtime(settings)
    runtime.schedule.dispatch = lambda count: None  # no worker: everything stays queued
    runtime.schedule.enqueue([CancelCommand(job_id=1000 + i, user_id="bulk@example.org", products="all")
                           for i in range(3000)])
    scans: list[int] = []
    original = StoreCollector._count_commands

    def counting(self, connection):  # type: ignore[no-untyped-def]
        scans.append(1)
        return original(self, connection)

    monkeypatch.setattr(StoreCollector, "_count_commands", counting)
    apis = [create_api(runtime=runtime).test_client(), create_api(runtime=create_runtime(settings)).test_client()]
    started = time.perf_counter()
    texts = [apis[i % 2].get("/metrics").get_data(as_text=True) for i in range(40)]
    took = time.perf_counter() - started
    assert len(scans) == 1  # one SCAN over the records for 40 scrapes of two API processes
    assert all(gauge(text, "ukcancel_commands", state="queued") == 3000 for text in texts)
    assert took < 10


def test_the_cache_expires_and_the_pause_is_always_live(redis_url: str) -> None:
    runtime = create_runtime(Settings(redis_url=redis_url, metrics_cache_seconds=30))
    runtime.schedule.dispatch = lambda count: None
    now = [1000.0]
    collector = StoreCollector(runtime, clock=lambda: now[0])
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    assert gauge(generate_latest(registry).decode(), "ukcancel_queue_depth") == 0
    runtime.schedule.enqueue([CancelCommand(job_id=1001, user_id="a@example.org", products="all")])
    runtime.gate.pause(120)
    text = generate_latest(registry).decode()
    assert gauge(text, "ukcancel_queue_depth") == 0  # cached
    assert 100 < gauge(text, "ukcancel_fleet_paused_seconds") <= 120  # live
    runtime.gate.resume()
    now[0] += 31
    runtime.connection.delete("ukcancel:metrics:commands")
    text = generate_latest(registry).decode()
    assert gauge(text, "ukcancel_queue_depth") == 1 and gauge(text, "ukcancel_fleet_paused_seconds") == 0
    assert collector.computations == 2


def test_the_metrics_token_restricts_the_endpoint(redis_url: str) -> None:
    client = create_api(runtime=create_runtime(Settings(redis_url=redis_url, metrics_token=SCRAPE_TOKEN))).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.mimetype == "application/problem+json"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert allowed.status_code == 200 and "ukcancel_fleet_paused_seconds" in allowed.get_data(as_text=True)
