"""gunicorn in front of the API, as the shipped command lines run it: its own refusals (400, 414,
431) are RFC 9457 problems, and a documented 1,000-id GET /v1/jobs fits its request-line limit."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from processes import clean_environment, free_port, kill_group, start_in_own_group, wait_until

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
# The shipped command (ops/Dockerfile CMD), on a free loopback port.
ARGS = ["--worker-class", "gevent", "--worker-connections", "200", "--timeout", "90", "--limit-request-line", "8190",
        "ukcancel.wsgi:app"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start_in_own_group([GUNICORN, "--bind", f"127.0.0.1:{port}", *ARGS], clean_environment(),
                                 tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        assert wait_until(up, 30), (tmp_path / "gunicorn.log").read_text()[-2000:]
        yield url
    finally:
        kill_group(process)


def raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v1/jobs?job_ids=" + b"1" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ],
)
def test_gunicorns_own_refusals_are_problems(served: str, request_bytes: bytes, status: int) -> None:
    answered, headers, body = raw(served, request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status and problem["type"] == "about:blank" and problem["title"]


def test_a_thousand_short_job_ids_fit_the_request_line(served: str) -> None:
    ids = ",".join(str(10000 + i) for i in range(1000))  # 5 digits, commas percent-encoded by requests
    response = requests.get(served + "/v1/jobs", params={"job_ids": ids}, timeout=10)
    assert len(response.request.url) > 4094  # longer than gunicorn's default limit
    assert response.status_code == 401 and response.headers["Content-Type"] == "application/problem+json"
