"""Delivering callbacks: a signed POST (Standard Webhooks) of the finished command to its `callback_url`.

When a command with a `callback_url` becomes terminal, the transition script marks its callback
pending and puts it in the outbox (`ukcancel.callback.CallbackOutbox`). The reconciler's sweep
hands what is due to this worker's `CallbackSender`: a small pool of its own, with at most
`callback_per_host` deliveries to any one receiver host at a time, so callbacks never take the
worker slots cancel commands run in, and one user's slow receiver delays only its own notices.
Each delivery is one attempt; a transient failure puts the callback back in the outbox with
back-off, up to `callback_max_attempts`. The outcome is stored on the command (`callback` field)
and shown by GET:

    {"status": "pending" | "delivered" | "refused" | "failed", "attempts", "http_status", "error", "at"}

"refused" means no request was made: the host is not (or no longer) allowed, or the submitting
token was revoked so there is no secret to sign with. Redirects are not followed (a redirect
could lead anywhere, past the host allow list); a 3xx is a failure. Only the status is read:
the response body is never downloaded.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from celery import Celery

from ukcancel import __version__, callback
from ukcancel.callback import CallbackOutbox, CallbackOutcome
from ukcancel.command import CancelCommand
from ukcancel.retry import TRANSIENT_STATUSES, backoff_delay
from ukcancel.schemas import CancellationSchema
from ukcancel.worker.base_task import ServiceTask, service_task
from ukcancel.worker.bounded_http import BoundedHttp, BoundedHttpError

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

DELIVER_CALLBACK = "ukcancel.deliver_callback"
TIMEOUT_SECONDS = (5.0, 10.0)  # connect, read: a receiver should answer at once and work later
# The whole delivery, however the receiver trickles its answer: a slow receiver holds one of the
# sender's threads (and one of its host's two places) this long at most.
DEADLINE_SECONDS = 15.0


def callback_body(command: CancelCommand) -> bytes:
    """The command as `GET /v1/cancellations/{id}` shows it; these exact bytes are signed."""
    return json.dumps(CancellationSchema().dump(command), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Attempt:
    """The outcome of one attempt, and when to try again (None: do not)."""

    outcome: dict[str, Any]
    retry_in: float | None = None


class CallbackDelivery:
    """Makes one delivery attempt for a command and records the outcome on it."""

    def __init__(self, runtime: Runtime, http: BoundedHttp, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.http = http
        self.clock = clock
        self.outbox = CallbackOutbox(runtime.connection, clock)

    def attempt(self, command_id: str, attempt: int | None = None) -> Attempt | None:
        """One attempt (number `attempt`, 1-based; default: the next after those recorded on the
        command); None when there is nothing to deliver (the outbox entry is then dropped)."""
        command = self.runtime.registry.get(command_id)
        if command is None or not command.callback_url:
            self.outbox.drop(command_id)  # expired, or nothing to send: out of the outbox
            return None
        if command.callback and command.callback.get("status") in callback.SETTLED:
            self.runtime.registry.record_callback(command_id, command.callback)  # delivered twice: keep it
            return Attempt(command.callback)
        if attempt is None:
            attempt = int((command.callback or {}).get("attempts") or 0) + 1
        if not callback.host_allowed(command.callback_url, self.settings.callback_allowed_hosts):
            return self._record(command_id, CallbackOutcome.REFUSED, attempt - 1, error="the callback host is not allowed")
        token = self.runtime.tokens.by_name(command.submitted_by or "")
        if token is None or not token.callback_secret:
            return self._record(
                command_id, CallbackOutcome.REFUSED, attempt - 1,
                error="the submitting token was revoked: no secret to sign with",
            )
        body = callback_body(command)
        try:
            response = self.http.request(
                "POST",
                command.callback_url,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": f"ukssdc-cancel/{__version__}",
                    **callback.signed_headers(command.id, body, token.callback_secret, self.clock()),
                },
                deadline_seconds=DEADLINE_SECONDS,
                max_bytes=0,  # the status is all we need: the body is never read
                connect_timeout=TIMEOUT_SECONDS[0],
                read_timeout=TIMEOUT_SECONDS[1],
            )
        except (requests.RequestException, BoundedHttpError) as exc:
            return self._retry_or_fail(command_id, attempt, None, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return self._record(command_id, CallbackOutcome.DELIVERED, attempt, http_status=response.status_code)
        error = f"the receiver answered HTTP {response.status_code}"
        if response.status_code in TRANSIENT_STATUSES:
            return self._retry_or_fail(command_id, attempt, response.status_code, error)
        if 300 <= response.status_code < 400:
            error += " (redirects are not followed)"
        return self._record(command_id, CallbackOutcome.FAILED, attempt, http_status=response.status_code, error=error)

    def _retry_or_fail(self, command_id: str, attempt: int, http_status: int | None, error: str) -> Attempt:
        if attempt >= self.settings.callback_max_attempts:
            return self._record(command_id, CallbackOutcome.FAILED, attempt, http_status=http_status, error=error)
        delay = backoff_delay(attempt, self.settings.retry_base_seconds, self.settings.retry_max_delay_seconds)
        return self._record(command_id, CallbackOutcome.PENDING, attempt, http_status=http_status, error=error, retry_in=delay)

    def _record(
        self,
        command_id: str,
        status: str,
        attempts: int,
        *,
        http_status: int | None = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> Attempt:
        now = self.clock()
        outcome = {"status": status, "attempts": attempts, "http_status": http_status, "error": error, "at": now}
        # Settled outcomes leave the outbox; a retry stays in it, due again after the back-off.
        self.runtime.registry.record_callback(command_id, outcome, None if retry_in is None else now + retry_in)
        if status in (CallbackOutcome.REFUSED, CallbackOutcome.FAILED):
            log.warning("callback of command %s %s: %s", command_id, status, error)
        return Attempt(outcome, retry_in)


class CallbackSender:
    """Delivers callbacks on a small pool of its own threads, at most `per_host` at a time to any
    one receiver (host and port; the reconciler's sweep offers what is due, see `ukcancel.reconciler`)."""

    def __init__(self, runtime: Runtime, http: BoundedHttp, *, threads: int = 4, per_host: int = 2) -> None:
        self.delivery = CallbackDelivery(runtime, http)
        self.registry = runtime.registry
        self.threads = threads
        self.per_host = per_host
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ukcancel-callback")
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}  # receiver host -> deliveries under way
        self._under_way = 0

    def free(self) -> int:
        """Deliveries this sender could start now."""
        with self._lock:
            return max(0, self.threads - self._under_way)

    def offer(self, command_id: str) -> bool:
        """Start delivering `command_id`'s callback unless the pool or its receiver host is busy."""
        url = self.registry.callback_url(command_id)
        host = urlsplit(url).netloc.rpartition("@")[2].lower() if url else ""  # host[:port], no credentials
        with self._lock:
            if self._under_way >= self.threads or self._busy.get(host, 0) >= self.per_host:
                return False
            self._under_way += 1
            self._busy[host] = self._busy.get(host, 0) + 1
        self._pool.submit(self._deliver, command_id, host)
        return True

    def _deliver(self, command_id: str, host: str) -> None:
        try:
            self.delivery.attempt(command_id)
        except Exception:  # the outbox sends it again after its lease
            log.exception("callback of command %s: delivery failed", command_id)
        finally:
            with self._lock:
                self._under_way -= 1
                self._busy[host] -= 1
                if not self._busy[host]:
                    del self._busy[host]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def register_callback_tasks(app: Celery) -> None:
    @service_task(app, DELIVER_CALLBACK)
    def deliver_callback(self: ServiceTask, command_id: str) -> None:
        """A delivery asked for by an earlier version's message: the callback goes in the outbox."""
        CallbackOutbox(self.runtime.connection).schedule(command_id)
