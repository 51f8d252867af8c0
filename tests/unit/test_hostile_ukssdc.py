"""A hostile UKSSDC stand-in: absurd Retry-After, trickled replies, huge replies.

Each case is a real TCP server in a thread speaking just enough HTTP to be hostile, and the real
client (`UkssdcClient` over `BoundedHttp`); the fleet gate is the real one on real Redis.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from ukcancel.fleet import FleetGate
from ukcancel.settings import Settings
from ukcancel.worker.ukssdc import CANCEL, TransientFailure, UkssdcClient, parse_retry_after

Behaviour = Callable[[socket.socket], None]


@contextmanager
def hostile_server(behaviour: Behaviour) -> Iterator[str]:
    """A server that reads a request, then does `behaviour` with the connection; yields its base URL."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            try:
                behaviour(conn)
            except OSError:
                pass  # the client hung up, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def reply_503(retry_after: str) -> Behaviour:
    def behaviour(conn: socket.socket) -> None:
        conn.sendall(
            f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )

    return behaviour


def trickle_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    for _ in range(200):
        time.sleep(0.2)
        conn.sendall(b" ")


def trickle_headers(conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400:
        time.sleep(0.2)
        conn.sendall(bytes([byte]))


def huge_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    block = b" " * 65536
    for _ in range(50 * 16):  # 50 MiB, with no Content-Length to refuse it early
        conn.sendall(block)


def client(base_url: str, **bounds: float) -> UkssdcClient:
    return UkssdcClient(base_url, "1.12", 2, 5, **bounds)  # type: ignore[arg-type]


def failure_of(base_url: str, **bounds: float) -> tuple[TransientFailure, float]:
    started = time.monotonic()
    with pytest.raises(TransientFailure) as caught:
        client(base_url, **bounds).call(CANCEL, {"UserID": "u@example.org", "JobID": 1, "what": "lc"})
    return caught.value, time.monotonic() - started


@pytest.mark.parametrize(
    "header",
    ["86400000", "9" * 30, "901", "Fri, 31 Dec 9999 23:59:59 GMT", "soon", "-5", "1e9", "\u0663\u0660", "NaN"],
)
def test_absurd_retry_after_is_ignored(header: str) -> None:
    assert parse_retry_after(header, now=0.0, maximum=900) is None


def test_a_sane_retry_after_is_honoured_up_to_the_maximum() -> None:
    assert parse_retry_after("7", maximum=900) == 7.0
    assert parse_retry_after("900", maximum=900) == 900.0
    assert parse_retry_after(" 15 ", maximum=900) == 15.0


@pytest.mark.parametrize("header", ["86400000", "9" * 30, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_absurd_retry_after_is_transient_and_pauses_nobody(header: str, redis_client: redis.Redis) -> None:
    gate = FleetGate(redis_client, Settings())
    with hostile_server(reply_503(header)) as url:
        with pytest.raises(TransientFailure) as caught:
            with gate.permit(max_wait=1):
                client(url, retry_after_max=900).call(CANCEL, {"UserID": "u@example.org", "JobID": 1, "what": "lc"})
    failure = caught.value
    assert failure.transient and failure.status_code == 503
    assert failure.fleet_pause is None and failure.retry_after is None
    assert "Retry-After" in str(failure) and "ignored" in str(failure)
    assert gate.paused_for() == 0


def test_a_retry_after_within_the_maximum_still_pauses_the_fleet(redis_client: redis.Redis) -> None:
    gate = FleetGate(redis_client, Settings())
    with hostile_server(reply_503("30")) as url:
        with pytest.raises(TransientFailure):
            with gate.permit(max_wait=1):
                client(url, retry_after_max=900).call(CANCEL, {"UserID": "u@example.org", "JobID": 1, "what": "lc"})
    assert 25 < gate.paused_for() <= 30


def test_a_trickled_body_ends_at_the_deadline_not_per_read() -> None:
    with hostile_server(trickle_body) as url:
        failure, took = failure_of(url, deadline=1.5)
    assert failure.kind == "deadline" and failure.maybe_processed
    assert "1.5 s deadline" in str(failure)
    assert took < 3.0  # each byte came within the 5 s read timeout; the body would take 40 s


def test_trickled_headers_end_at_the_deadline() -> None:
    with hostile_server(trickle_headers) as url:
        failure, took = failure_of(url, deadline=1.5)
    assert failure.kind == "deadline"
    assert took < 3.0


def test_a_huge_reply_is_cut_at_the_cap() -> None:
    with hostile_server(huge_body) as url:
        failure, took = failure_of(url, max_reply_bytes=256 * 1024, deadline=20)
    assert failure.kind == "too_large" and failure.transient
    assert "262144-byte cap" in str(failure)
    assert took < 5.0


def test_a_declared_huge_reply_is_refused_before_its_body() -> None:
    def declared(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400000000\r\n\r\n")
        time.sleep(3)

    with hostile_server(declared) as url:
        failure, took = failure_of(url, max_reply_bytes=1024)
    assert failure.kind == "too_large" and took < 2.0


def test_a_normal_reply_within_the_bounds_is_read() -> None:
    def fine(conn: socket.socket) -> None:
        body = b'{"OK": 1, "APIVersion": 1.12}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with hostile_server(fine) as url:
        assert client(url, deadline=3).call(CANCEL, {"UserID": "u@example.org", "JobID": 1, "what": "lc"})["OK"] == 1
