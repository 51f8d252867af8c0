"""Callbacks: a signed POST of the finished command, only to allowed hosts, retried with back-off."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from facility_api import ALICE, PROBLEM, Facility, build_facility
from processes import wait_for
from standardwebhooks.webhooks import Webhook

from ukcancel import callback
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.worker.bounded_http import BoundedHttp
from ukcancel.worker.callback_sender import CallbackDelivery, callback_body


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A pipeline's callback endpoint on 127.0.0.1; answers the scripted statuses in turn, then 200."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received.append(Received(self.path, dict(self.headers), body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", state.url("/redirected"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    thread.join(5)


def wait_for_callback(facility: Facility, command_id: str, status: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    command: dict[str, Any] = {}
    while time.monotonic() < deadline:
        command = facility.call("GET", f"/v1/cancellations/{command_id}", "alice").get_json()
        if (command.get("callback") or {}).get("status") == status:
            return command
        time.sleep(0.1)
    raise AssertionError(f"callback not {status} after {seconds} s: {command}")


# -- end to end, with a worker process ------------------------------------------------------------------
def test_callback_is_signed_retried_and_recorded(
    redis_url: str, simulator: SimulatorServer, receiver: Receiver, worker_factory: Any,
    make_worker_env: Callable[..., dict[str, str]],
) -> None:
    facility = build_facility(Settings(redis_url=redis_url, callback_allowed_hosts=(f"127.0.0.1:{receiver.port}",)))
    worker_factory(make_worker_env(redis_url, simulator, UKCANCEL_CALLBACK_ALLOWED_HOSTS=f"127.0.0.1:{receiver.port}",
                                   UKCANCEL_CALLBACK_MAX_ATTEMPTS="5"))
    receiver.statuses = [500, 503]  # fails twice, then 200
    command_id = facility.submit("alice", {"job_id": 1001, "products": ["lc"], "callback_url": receiver.url()})

    command = wait_for_callback(facility, command_id, callback.DELIVERED)
    assert command["state"] == "completed"
    assert command["callback"]["attempts"] == 3 and command["callback"]["http_status"] == 200
    assert command["callback"]["error"] is None and command["callback"]["at"]
    assert len(receiver.received) == 3
    secret = facility.records["alice"].callback_secret
    for delivery in receiver.received:
        assert delivery.headers["Content-Type"] == "application/json"
        assert callback.signature_valid(delivery.body, delivery.headers, secret)
        assert delivery.headers[callback.ID_HEADER] == command_id  # the same id on every retry
        assert delivery.headers[callback.SIGNATURE_HEADER].startswith("v1,")
        assert abs(int(delivery.headers[callback.TIMESTAMP_HEADER]) - time.time()) < 120
        # Any Standard Webhooks library verifies it with the whsec_ form of the secret.
        Webhook(callback.webhook_secret(secret)).verify(delivery.body, delivery.headers)
    sent = json.loads(receiver.received[-1].body)
    assert sent["id"] == command_id and sent["state"] == "completed"
    assert sent["result"] == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]
    # Another token's secret does not verify it.
    other = facility.records["bob"].callback_secret
    assert not callback.signature_valid(receiver.received[-1].body, receiver.received[-1].headers, other)


def test_a_signed_callback_cannot_be_replayed_altered_or_moved() -> None:
    secret = "ab" * 32
    body = b'{"id":"c1","state":"completed"}'
    now = time.time()
    headers = callback.signed_headers("c1", body, secret, now)
    assert callback.verify(body, headers, secret) == {"id": "c1", "state": "completed"}
    # Replayed after the tolerance window (5 minutes), or stamped in the future beyond it.
    for at in (now - callback.TOLERANCE_SECONDS - 30, now + callback.TOLERANCE_SECONDS + 30):
        assert not callback.signature_valid(body, callback.signed_headers("c1", body, secret, at), secret)
    # A fresh timestamp pasted onto an old signature, another id, another body: none verifies.
    assert not callback.signature_valid(body, {**headers, callback.TIMESTAMP_HEADER: str(int(now) + 1)}, secret)
    assert not callback.signature_valid(body, {**headers, callback.ID_HEADER: "c2"}, secret)
    assert not callback.signature_valid(body.replace(b"completed", b"aborted"), headers, secret)
    with pytest.raises(callback.InvalidCallback):
        callback.verify(body, {}, secret)
    # The whsec_ form and the secret as `token create` printed it sign the same.
    assert callback.signature_valid(body, headers, callback.webhook_secret(secret))
    assert callback.webhook_secret(secret).startswith("whsec_")


def test_a_host_no_longer_allowed_is_refused_without_a_request(
    redis_url: str, simulator: SimulatorServer, receiver: Receiver, worker_factory: Any,
    make_worker_env: Callable[..., dict[str, str]],
) -> None:
    # The API accepted the URL; by the time the worker delivers, the allow list no longer has it.
    facility = build_facility(Settings(redis_url=redis_url, callback_allowed_hosts=(f"127.0.0.1:{receiver.port}",)))
    worker_factory(make_worker_env(redis_url, simulator, UKCANCEL_CALLBACK_ALLOWED_HOSTS="hooks.example.org"))
    command_id = facility.submit("alice", {"job_id": 1001, "products": ["lc"], "callback_url": receiver.url()})

    command = wait_for_callback(facility, command_id, callback.REFUSED)
    assert command["callback"]["attempts"] == 0 and "not allowed" in command["callback"]["error"]
    assert command["state"] == "completed"
    time.sleep(0.5)
    assert receiver.received == []


# -- at submission ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "message"),
    [("http://elsewhere.example.org/hook", "not allowed"), ("ftp://127.0.0.1/hook", "Not a valid URL."),
     ("http://user:secret@127.0.0.1/hook", "user name or password"), ("not a url", "Not a valid URL."),
     ("http://127.0.0.1/" + "x" * 2100, "Longer than maximum length 2048.")],
)
def test_a_callback_url_is_checked_at_submission(make_facility: Callable[..., Facility], url: str,
                                                 message: str) -> None:
    facility = make_facility(callback_allowed_hosts=("127.0.0.1",))
    response = facility.call("POST", "/v1/cancellations", "alice", {"job_id": 1001, "callback_url": url})
    assert response.status_code == 422
    assert response.content_type == PROBLEM
    [error] = response.get_json()["errors"]
    assert error["pointer"] == "/callback_url" and message in error["detail"]
    assert facility.command_ids() == set()


def test_an_allowed_host_may_name_its_port(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(callback_allowed_hosts=("hooks.example.org:8443",))
    ok = facility.call("POST", "/v1/cancellations", "alice",
                       {"job_id": 1001, "callback_url": "https://HOOKS.example.org:8443/done"})
    assert ok.status_code == 202
    other_port = facility.call("POST", "/v1/cancellations", "alice",
                               {"job_id": 1001, "callback_url": "https://hooks.example.org/done"})
    assert other_port.status_code == 422


def test_a_bare_allowed_host_allows_only_its_default_port(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(callback_allowed_hosts=("hooks.example.org",))

    def submitted(url: str) -> int:
        return facility.call("POST", "/v1/cancellations", "alice", {"job_id": 1001, "callback_url": url}).status_code

    assert submitted("https://hooks.example.org/done") == 202
    assert submitted("https://hooks.example.org:443/done") == 202
    assert submitted("http://hooks.example.org:80/done") == 202
    for url in ("https://hooks.example.org:8443/done", "http://hooks.example.org:6379/", "https://hooks.example.org:80/x"):
        assert submitted(url) == 422, url


def test_a_withdrawn_command_schedules_its_callback(make_facility: Callable[..., Facility]) -> None:
    facility = make_facility(callback_allowed_hosts=("127.0.0.1:9",))
    command_id = facility.submit("alice", {"job_id": 1001, "callback_url": "http://127.0.0.1:9/hook"})
    assert facility.call("GET", f"/v1/cancellations/{command_id}", "alice").get_json()["callback"] is None
    withdrawn = facility.call("DELETE", f"/v1/cancellations/{command_id}", "alice").get_json()
    assert withdrawn["callback_url"] == "http://127.0.0.1:9/hook"
    assert withdrawn["callback"]["status"] == callback.PENDING and withdrawn["callback"]["attempts"] == 0


# -- one delivery attempt at a time ---------------------------------------------------------------
@pytest.fixture
def finished(make_facility: Callable[..., Facility], receiver: Receiver) -> tuple[Facility, str]:
    """A withdrawn (terminal) command of alice's with a callback to the receiver; max 3 attempts."""
    facility = make_facility(callback_allowed_hosts=(f"127.0.0.1:{receiver.port}", "127.0.0.1:9"), callback_max_attempts=3,
                             retry_base_seconds=0.01, retry_max_delay_seconds=0.1)
    command_id = facility.submit("alice", {"job_id": 1001, "callback_url": receiver.url()})
    facility.runtime.registry.withdraw(command_id)
    return facility, command_id


def deliver(facility: Facility, command_id: str, attempt: int) -> Any:
    return CallbackDelivery(facility.runtime, BoundedHttp()).attempt(command_id, attempt)


def test_a_redirect_is_not_followed(finished: tuple[Facility, str], receiver: Receiver) -> None:
    facility, command_id = finished
    receiver.statuses = [302]
    outcome = deliver(facility, command_id, 1)
    assert outcome.retry_in is None
    assert outcome.outcome["status"] == callback.CallbackOutcome.FAILED and outcome.outcome["http_status"] == 302
    assert [r.path for r in receiver.received] == ["/hook"]  # never /redirected


def test_a_client_error_is_not_retried(finished: tuple[Facility, str], receiver: Receiver) -> None:
    facility, command_id = finished
    receiver.statuses = [401]
    outcome = deliver(facility, command_id, 1)
    assert outcome.retry_in is None and outcome.outcome["status"] == callback.CallbackOutcome.FAILED
    recorded = facility.runtime.registry.get(command_id).callback  # type: ignore[union-attr]
    assert recorded["status"] == callback.CallbackOutcome.FAILED and recorded["http_status"] == 401


def test_retries_stop_at_max_attempts(finished: tuple[Facility, str], receiver: Receiver) -> None:
    facility, command_id = finished
    receiver.statuses = [500, 500, 500, 500]
    first, second, third = (deliver(facility, command_id, n) for n in (1, 2, 3))
    assert first.retry_in is not None and first.outcome["status"] == callback.PENDING
    assert second.retry_in is not None
    assert third.retry_in is None and third.outcome == {**third.outcome, "status": callback.CallbackOutcome.FAILED, "attempts": 3}
    assert len(receiver.received) == 3


def test_an_unreachable_receiver_is_retried(finished: tuple[Facility, str], receiver: Receiver) -> None:
    facility, command_id = finished
    facility.runtime.registry.record_callback(command_id, {})
    facility.runtime.connection.hset(f"ukcancel:cmd:{command_id}", "callback_url", "http://127.0.0.1:9/closed")
    outcome = deliver(facility, command_id, 1)
    assert outcome.retry_in is not None and "ConnectionError" in outcome.outcome["error"]


def test_a_revoked_token_leaves_nothing_to_sign_with(finished: tuple[Facility, str], receiver: Receiver) -> None:
    facility, command_id = finished
    facility.runtime.tokens.revoke("alice")
    outcome = deliver(facility, command_id, 1)
    assert outcome.outcome["status"] == callback.REFUSED and "revoked" in outcome.outcome["error"]
    assert receiver.received == []


def test_the_body_is_the_command_as_get_shows_it(finished: tuple[Facility, str]) -> None:
    facility, command_id = finished
    shown = facility.call("GET", f"/v1/cancellations/{command_id}", "alice").get_json()
    sent = json.loads(callback_body(facility.runtime.registry.get(command_id)))  # type: ignore[arg-type]
    assert sent == shown
    assert sent["user_id"] == ALICE


# -- a slow receiver delays only its own notices ----------------------------------------------------
def test_a_slow_receiver_holds_two_sender_threads_at_most_and_no_longer_than_the_deadline(
    make_facility: Callable[..., Facility], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight callbacks to a receiver that trickles one byte every second took every worker slot:
    another user's cancel waited. Deliveries now run on the sender's own threads, at most two per
    receiver host, each bounded by a wall-clock deadline however the receiver trickles."""
    import socket

    from ukcancel.worker import callback_sender as deliveries
    from ukcancel.worker.callback_sender import CallbackSender

    monkeypatch.setattr(deliveries, "DEADLINE_SECONDS", 2.0)
    trickling = socket.socket()
    trickling.bind(("127.0.0.1", 0))
    trickling.listen(16)
    slow_port = trickling.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:  # accepts, reads the request, then sends "HTTP/1.1 200 OK" a byte a second
        while not stop.is_set():
            trickling.settimeout(0.2)
            try:
                connection, _ = trickling.accept()
            except OSError:
                continue
            threading.Thread(target=lambda c=connection: _dribble(c, stop), daemon=True).start()

    threading.Thread(target=trickle, daemon=True).start()
    facility = make_facility(callback_allowed_hosts=(f"127.0.0.1:{slow_port}", f"127.0.0.1:{receiver.port}"))
    slow = [facility.submit("alice", {"job_id": 2000 + n, "callback_url": f"http://127.0.0.1:{slow_port}/hook"})
            for n in range(8)]
    fast = facility.submit("alice", {"job_id": 3000, "callback_url": receiver.url()})
    for command_id in [*slow, fast]:
        facility.runtime.registry.withdraw(command_id)  # terminal: each callback is in the outbox
    sender = CallbackSender(facility.runtime, BoundedHttp(), threads=4, per_host=2)
    try:
        offered = [sender.offer(command_id) for command_id in slow]
        assert offered.count(True) == 2  # the slow host's two places; the rest wait in the outbox
        began = time.monotonic()
        assert sender.offer(fast)  # another host still has room on the sender's threads
        wait_for_callback(facility, fast, callback.DELIVERED, seconds=5)
        assert time.monotonic() - began < 2.0  # not behind the slow receiver
        first = slow[offered.index(True)]
        def tried() -> dict[str, Any] | None:
            record = facility.runtime.registry.get(first)
            return record.callback if record is not None and (record.callback or {}).get("attempts") else None

        cut = wait_for(tried, 10, "the first slow delivery to be cut at its deadline")
        assert cut["status"] == callback.PENDING and "DeadlineExceeded" in cut["error"]  # cut, to be retried
        assert time.monotonic() - began < 6.0
        assert facility.runtime.connection.zscore("ukcancel:callbacks:due", first) is not None
    finally:
        stop.set()
        sender.shutdown()
        trickling.close()


def _dribble(connection: Any, stop: threading.Event) -> None:
    with connection:
        connection.settimeout(5)
        try:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                if stop.wait(1.0):
                    return
                connection.sendall(bytes([byte]))
        except OSError:
            return
