"""Callbacks: which hosts the service may call, how a callback is signed, and scheduling one.

When a command with a `callback_url` becomes terminal, `CallbackScheduler` (a terminal hook)
marks its callback pending and has a worker (`ukcancel.worker.callbacks`) POST the command (as
`GET /v1/cancellations/{id}` shows it) to that URL, signed by the Standard Webhooks scheme:

    webhook-id: <the command id: the same on every retry, so a receiver can drop duplicates>
    webhook-timestamp: <epoch seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

The id and timestamp are signed with the body, so a captured callback cannot be replayed later
or as another command's: receivers refuse a timestamp more than `TOLERANCE_SECONDS` (5 minutes,
the scheme's default) from their clock. The key is the callback secret `ukcancel token create`
printed for the submitting token, in the scheme's form `whsec_<base64>`: `webhook_secret` turns
the stored secret (64 hex characters) into it, base64 of those characters' bytes, so a secret
issued before the scheme signs with the same key material. `verify` is the receivers' check
(any Standard Webhooks library does the same with the `whsec_` secret).

Only hosts listed in `UKCANCEL_CALLBACK_ALLOWED_HOSTS` are ever called, so a token cannot make the
service send requests into the facility's network: the list is checked when a command is
submitted (422) and again before every delivery (a list that shrank in between wins).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kombu.exceptions import KombuError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300  # the Standard Webhooks default, which `standardwebhooks` enforces

InvalidCallback = WebhookVerificationError

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


def webhook_secret(callback_secret: str) -> str:
    """The `whsec_` form of a token's callback secret (already in that form: unchanged)."""
    if callback_secret.startswith(SECRET_PREFIX):
        return callback_secret
    return SECRET_PREFIX + base64.b64encode(callback_secret.encode()).decode()


def signed_headers(message_id: str, body: bytes, callback_secret: str, at: float) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt to send `body`."""
    timestamp = datetime.fromtimestamp(int(at), tz=timezone.utc)
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(int(at)),
        SIGNATURE_HEADER: Webhook(webhook_secret(callback_secret)).sign(message_id, timestamp, body.decode()),
    }


def verify(body: bytes, headers: Mapping[str, str], callback_secret: str) -> Any:
    """A receiver's check: the parsed body if id, timestamp and body are signed with this secret and the
    timestamp is within `TOLERANCE_SECONDS` of now; raises `InvalidCallback` otherwise."""
    Webhook(webhook_secret(callback_secret)).verify(body, dict(headers), json_parse=False)
    return json.loads(body)


def signature_valid(body: bytes, headers: Mapping[str, str], callback_secret: str) -> bool:
    """`verify` as a yes or no."""
    try:
        verify(body, headers, callback_secret)
    except InvalidCallback:
        return False
    return True


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
