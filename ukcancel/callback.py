"""Callbacks: which hosts the service may call, how a callback is signed, and scheduling one.

When a command with a `callback_url` becomes terminal, the transition script itself marks its
callback pending and puts it in the outbox (``ukcancel:callbacks:due``, `CallbackOutbox`); the
reconciler's sweep hands what is due to a worker's callback sender (`ukcancel.worker.callback_sender`),
which POSTs the command (as `GET /v1/cancellations/{id}` shows it) to that URL, signed by the
Standard Webhooks scheme:

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

Delivery is at least once: a callback leaves the outbox only when its outcome is recorded
(delivered, refused, or failed for good), so one lost with its worker is sent again after its
delivery lease; receivers drop duplicates by the `webhook-id`.

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
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ukcancel import keys
from ukcancel.store import as_text

log = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300  # the Standard Webhooks default, which `standardwebhooks` enforces

InvalidCallback = WebhookVerificationError



class CallbackOutcome(StrEnum):
    """Where a command's callback stands, as its record stores it and the API shows it (the values
    never change)."""

    PENDING = "pending"  # in the outbox, to be sent (again)
    DELIVERED = "delivered"
    REFUSED = "refused"  # not sent: the host is not allowed, or the token was revoked
    FAILED = "failed"  # sent, and given up on


DELIVERED, REFUSED, PENDING = CallbackOutcome.DELIVERED, CallbackOutcome.REFUSED, CallbackOutcome.PENDING
OUTCOMES = tuple(outcome.value for outcome in CallbackOutcome)
SETTLED = frozenset({DELIVERED, REFUSED, CallbackOutcome.FAILED})  # out of the outbox for good


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


# KEYS[1] the callback outbox (command id -> when due)
# ARGV[1] now   ARGV[2] the delivery lease's end (epoch s)   ARGV[3] how many at most
# Takes up to ARGV[3] callbacks due by now, moving each to ARGV[2] first, so one whose delivery is
# lost (its worker died) is due again then. Returns their command ids, the longest due first.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


class CallbackOutbox:
    """The callbacks still to be delivered, each with the time it is next due.

    Redis keys owned: ``ukcancel:callbacks:due`` (see `ukcancel.keys`); the terminal transition
    (`ukcancel.command.TRANSITION_LUA`) adds to it and `CommandRegistry.record_callback` settles.
    """

    def __init__(self, connection: redis.Redis, clock: Callable[[], float] = time.time,
                 lease_seconds: float = 60.0) -> None:
        self.connection = connection
        self.clock = clock
        self.lease_seconds = lease_seconds
        self._claim_due = connection.register_script(_CLAIM_DUE)

    def claim_due(self, limit: int) -> list[str]:
        """Up to `limit` callbacks due now, each leased for `lease_seconds`."""
        if limit <= 0:
            return []
        now = self.clock()
        ids = self._claim_due(keys=[keys.CALLBACK_OUTBOX], args=[repr(now), repr(now + self.lease_seconds), limit])
        return [as_text(command_id) for command_id in ids]

    def due_again(self, command_id: str, at: float) -> None:
        """A claimed callback that could not be handed over now: due again at `at`."""
        self.connection.zadd(keys.CALLBACK_OUTBOX, {command_id: at}, xx=True)

    def schedule(self, command_id: str) -> None:
        """Put a callback in the outbox now, unless it is there already (a message of an earlier
        version asking for a delivery)."""
        self.connection.zadd(keys.CALLBACK_OUTBOX, {command_id: self.clock()}, nx=True)

    def drop(self, command_id: str) -> None:
        """Nothing to deliver (the command expired, or has no callback URL)."""
        self.connection.zrem(keys.CALLBACK_OUTBOX, command_id)

    def pending(self) -> int:
        return int(self.connection.zcard(keys.CALLBACK_OUTBOX))
