"""Callbacks: which hosts the service may call, how a callback body is signed, and scheduling one.

When a command with a `callback_url` becomes terminal, `CallbackScheduler` (a terminal hook)
marks its callback pending and has a worker (`ukcancel.worker.callbacks`) POST the command (as
`GET /v1/cancellations/{id}` shows it) to that URL. The receiver checks

    X-Ukcancel-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the callback secret>

where the callback secret is the one `ukcancel token create` printed for the token that submitted
the command. `X-Ukcancel-Timestamp` (epoch seconds) says when the attempt was made.

Only hosts listed in `UKCANCEL_CALLBACK_ALLOWED_HOSTS` are ever called, so a token cannot make the
service send requests into the facility's network: the list is checked when a command is
submitted (422) and again before every delivery (a list that shrank in between wins).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kombu.exceptions import KombuError

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Ukcancel-Signature"
TIMESTAMP_HEADER = "X-Ukcancel-Timestamp"
SIGNATURE_SCHEME = "sha256="

DELIVERED, REFUSED, FAILED, PENDING = "delivered", "refused", "failed", "pending"
OUTCOMES = (PENDING, DELIVERED, REFUSED, FAILED)


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """True if the URL's host (or host:port) is on the allow list; host names compare case-blind."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a malformed port
        return False
    if not host:
        return False
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    candidates = {host, f"{host}:{port or default_port}"}
    return any(allowed.lower() in candidates for allowed in allowed_hosts)


def signature(body: bytes, secret: str) -> str:
    """The `X-Ukcancel-Signature` value for `body`."""
    return SIGNATURE_SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, secret: str, header: str | None) -> bool:
    """A receiver's check: constant-time comparison of the header with the expected signature."""
    return header is not None and hmac.compare_digest(signature(body, secret), header)


class CallbackScheduler:
    """Terminal hook: schedules the delivery of a finished command's callback, if it has one."""

    def __init__(self, runtime: Runtime, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.clock = clock

    def __call__(self, command_id: str) -> None:
        command = self.runtime.registry.get(command_id)
        if command is None or not command.callback_url:
            return
        pending = {"status": PENDING, "attempts": 0, "http_status": None, "error": None, "at": self.clock()}
        self.runtime.registry.record_callback(command_id, pending)
        try:
            self.runtime.dispatch.deliver_callback(command_id)
        except KombuError as exc:
            # Recorded, not raised: the command itself has ended well; only its notice is lost.
            failed = {**pending, "status": FAILED, "error": f"could not be scheduled: broker unavailable: {exc}"}
            self.runtime.registry.record_callback(command_id, failed)
            log.error("callback of command %s not scheduled: %s", command_id, exc)
