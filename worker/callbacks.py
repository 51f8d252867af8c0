"""Delivering callbacks: a signed POST (Standard Webhooks) of the finished command to its `callback_url`.

When a command with a `callback_url` becomes terminal, `ukcancel.callback.CallbackScheduler` (a
terminal hook) marks its callback pending and sends the Celery task `ukcancel.deliver_callback`. The
task makes one attempt per run and retries through Celery with back-off, up to
`callback_max_attempts`. The outcome is stored on the command (`callback` field) and shown by GET:

    {"status": "pending" | "delivered" | "refused" | "failed", "attempts", "http_status", "error", "at"}

"refused" means no request was made: the host is not (or no longer) allowed, or the submitting
token was revoked so there is no secret to sign with. Redirects are not followed (a redirect
could lead anywhere, past the host allow list); a 3xx is a failure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from celery import Celery

from ukcancel import __version__, callback
from ukcancel.command import CancelCommand
from ukcancel.retry import TRANSIENT_STATUSES, backoff_delay
from ukcancel.schemas import CancellationSchema
from ukcancel.worker.base_task import ServiceTask, service_task

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

DELIVER_CALLBACK = "ukcancel.deliver_callback"
TIMEOUT_SECONDS = (5.0, 10.0)  # connect, read: a receiver should answer at once and work later


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

    def __init__(self, runtime: Runtime, session: requests.Session, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.session = session
        self.clock = clock

    def attempt(self, command_id: str, attempt: int) -> Attempt | None:
        """Attempt number `attempt` (1-based); None when there is nothing to deliver."""
        command = self.runtime.registry.get(command_id)
        if command is None or not command.callback_url:
            return None
        if not callback.host_allowed(command.callback_url, self.settings.callback_allowed_hosts):
            return self._record(command_id, callback.REFUSED, attempt - 1, error="the callback host is not allowed")
        token = self.runtime.tokens.by_name(command.submitted_by or "")
        if token is None or not token.callback_secret:
            return self._record(
                command_id, callback.REFUSED, attempt - 1,
                error="the submitting token was revoked: no secret to sign with",
            )
        body = callback_body(command)
        try:
            response = self.session.post(
                command.callback_url,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": f"ukssdc-cancel/{__version__}",
                    **callback.signed_headers(command.id, body, token.callback_secret, self.clock()),
                },
                timeout=TIMEOUT_SECONDS,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return self._retry_or_fail(command_id, attempt, None, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return self._record(command_id, callback.DELIVERED, attempt, http_status=response.status_code)
        error = f"the receiver answered HTTP {response.status_code}"
        if response.status_code in TRANSIENT_STATUSES:
            return self._retry_or_fail(command_id, attempt, response.status_code, error)
        if 300 <= response.status_code < 400:
            error += " (redirects are not followed)"
        return self._record(command_id, callback.FAILED, attempt, http_status=response.status_code, error=error)

    def _retry_or_fail(self, command_id: str, attempt: int, http_status: int | None, error: str) -> Attempt:
        if attempt >= self.settings.callback_max_attempts:
            return self._record(command_id, callback.FAILED, attempt, http_status=http_status, error=error)
        delay = backoff_delay(attempt, self.settings.retry_base_seconds, self.settings.retry_max_delay_seconds)
        recorded = self._record(command_id, callback.PENDING, attempt, http_status=http_status, error=error)
        return Attempt(recorded.outcome, retry_in=delay)

    def _record(
        self, command_id: str, status: str, attempts: int, *, http_status: int | None = None, error: str | None = None
    ) -> Attempt:
        outcome = {
            "status": status, "attempts": attempts, "http_status": http_status, "error": error, "at": self.clock()
        }
        self.runtime.registry.record_callback(command_id, outcome)
        if status in (callback.REFUSED, callback.FAILED):
            log.warning("callback of command %s %s: %s", command_id, status, error)
        return Attempt(outcome)


def register_callback_tasks(app: Celery) -> None:
    @service_task(app, DELIVER_CALLBACK, max_retries=None)
    def deliver_callback(self: ServiceTask, command_id: str) -> str | None:
        """One delivery attempt; Celery's retry (same task id) carries the attempt count."""
        result = CallbackDelivery(self.runtime, self.http).attempt(command_id, self.request.retries + 1)
        if result is None:
            return None
        if result.retry_in is not None:
            raise self.retry(countdown=result.retry_in, max_retries=None)
        return str(result.outcome["status"])
