"""The Python client at its edges: a URL that is not the service, readiness, bounded waits."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from ukcancel.client import Client, ServiceError, UnexpectedAnswer, not_found

Served = Any  # the fixtures of tests/cli/conftest.py


def test_a_url_without_scheme_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        Client("localhost:8000", "ukc_x")


def test_another_servers_html_page_is_an_unexpected_answer_not_a_not_found(served: Served) -> None:
    client = Client(served.simulator.base_url, served.token, connect_attempts=1)  # answers HTML 404 to GET
    with pytest.raises(UnexpectedAnswer) as caught:
        client.get("0" * 32)
    assert caught.value.status == 404 and caught.value.content_type == "text/html"
    assert caught.value.glimpse  # the page's title, to recognise it by
    assert not not_found(caught.value)  # it must not read as "no such command"


def test_the_services_own_404_is_a_not_found(served: Served) -> None:
    with pytest.raises(ServiceError) as caught:
        Client(served.url, served.token).get("0" * 32)
    assert not isinstance(caught.value, UnexpectedAnswer) and not_found(caught.value)


def test_readiness_reports_workers_whether_ready_or_not(served: Served, served_without_worker: Served) -> None:
    assert Client(served.url, served.token).readiness()["checks"]["workers"] == 1
    idle = Client(served_without_worker.url, served_without_worker.token).readiness()
    assert idle["status"] == "unavailable" and idle["checks"]["workers"] == "no live worker"


def test_a_fractional_timeout_long_polls_instead_of_spinning(served_without_worker: Served) -> None:
    client = Client(served_without_worker.url, served_without_worker.token)
    command_id = client.submit(1001, ["LightCurve"])
    calls: list[str] = []
    client.session.hooks["response"].append(lambda response, *args, **kwargs: calls.append(response.url))
    started = time.monotonic()
    command = client.wait(command_id, timeout=0.5)
    elapsed = time.monotonic() - started
    assert command["state"] == "queued"
    assert 0.5 <= elapsed < 3
    assert len(calls) <= 2, calls  # one long poll of a second, not a loop of zero-second ones


def test_list_page_passes_filters_and_returns_the_cursor(served_without_worker: Served) -> None:
    client = Client(served_without_worker.url, served_without_worker.token)
    ids = [client.submit(job, "all") for job in (1001, 1002, 1003)]
    page = client.list_page(limit=2)
    assert [c["id"] for c in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    assert [c["job_id"] for c in client.list_page(job_id=1002)["items"]] == [1002]
    assert [c["id"] for c in client.list(limit=1)] == ids[::-1]


def test_a_success_that_is_not_json_is_an_unexpected_answer(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(served.url, served.token)
    response = requests.Response()
    response.status_code, response._content, response.url = 200, b"<html>hello</html>", served.url
    response.headers["Content-Type"] = "text/html"
    monkeypatch.setattr(client, "request", lambda *args, **kwargs: response)
    with pytest.raises(UnexpectedAnswer, match="HTTP 200"):
        client.submit(1001)
