"""The UKSSDC XRT product-job API, spoken as `shared/ukssdc-protocol.md` describes it.

Calls go only to `base_url` and the fixed endpoint names below; redirects are not followed, so
no reply can send the worker elsewhere. Failures are sorted into transient (worth a retry) and
permanent (final at once); a transient failure also says whether the request may already have
reached the server, which the caller must settle before trusting a retry's answer.
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests

from ukcancel import metrics
from ukcancel.outcome import CancelReply, UnintelligibleReply, parse_cancel_reply, parse_json_reply
from ukcancel.retry import TRANSIENT_STATUSES, CallFailure
from ukcancel.settings import DEFAULT_MAX_REPLY_BYTES, DEFAULT_RETRY_AFTER_MAX_SECONDS
from ukcancel.worker.bounded_http import BoundedHttp, DeadlineExceeded, ResponseTooLarge

log = logging.getLogger(__name__)

CANCEL = "canceljob.php"
CHECK_STATUS = "checkProductStatus.php"
LIST_OLD_JOBS = "listOldJobs.php"
NUM_JOBS = "getNumJobs.php"
ENDPOINTS = (CANCEL, CHECK_STATUS, LIST_OLD_JOBS, NUM_JOBS)


class UkssdcFailure(CallFailure):
    """A UKSSDC call that produced no usable answer."""


class TransientFailure(UkssdcFailure):
    transient = True


class PermanentFailure(UkssdcFailure):
    transient = False


@dataclass(frozen=True)
class ServerError:
    """`OK: 0`: the server understood the call and refused it."""

    message: str


# Longer than any Retry-After worth reading as digits: past this it is refused without conversion.
_MAX_DIGITS = 12


def parse_retry_after(
    value: str | None, now: float | None = None, maximum: float = DEFAULT_RETRY_AFTER_MAX_SECONDS
) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date).

    None when absent, unreadable or absurd: more than `maximum` seconds (a huge number, a date far
    ahead). The reply is then an ordinary transient failure that pauses nobody: one peer's answer
    must not stop the fleet for longer than the operator allows.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        if len(value) > _MAX_DIGITS:
            return None
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if when is None:
            return None
        try:
            seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
        except (OverflowError, OSError, ValueError):
            return None
    return seconds if seconds <= maximum else None


class UkssdcClient:
    """POSTs JSON to the UKSSDC endpoints and reads their replies.

    Every call is bounded (`ukcancel.worker.bounded_http`): `deadline` seconds for the whole
    exchange and `max_reply_bytes` of reply, past either a transient failure; a Retry-After over
    `retry_after_max` seconds is ignored (see `parse_retry_after`).
    """

    _warned: set[str] = set()  # deprecation warning types already logged by this process

    def __init__(
        self,
        base_url: str,
        api_version: str,
        connect_timeout: float,
        read_timeout: float,
        session: requests.Session | None = None,
        *,
        deadline: float | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        retry_after_max: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.timeout = (connect_timeout, read_timeout)
        self.deadline = deadline if deadline is not None else connect_timeout + read_timeout
        self.max_reply_bytes = max_reply_bytes
        self.retry_after_max = retry_after_max
        self.http = BoundedHttp(session)

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """The reply's JSON object (OK may be 0); raises `UkssdcFailure` when there is no answer."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"not a UKSSDC endpoint this service calls: {endpoint}")
        started, outcome = time.perf_counter(), "error"
        try:
            parsed = self._exchange(endpoint, body)
            outcome = "ok" if parsed["OK"] else "refused"
            return parsed
        except UkssdcFailure as failure:
            outcome = failure.kind
            raise
        finally:
            metrics.count_call(endpoint, outcome, time.perf_counter() - started)

    def _exchange(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = {**body, "api_name": "xrt_prods", "api_version": self.api_version}
        url = f"{self.base_url}/{endpoint}"
        try:
            reply = self.http.request(
                "POST", url, json=payload, deadline_seconds=self.deadline, max_bytes=self.max_reply_bytes,
                connect_timeout=self.timeout[0], read_timeout=self.timeout[1],
            )
        except DeadlineExceeded:
            raise TransientFailure(
                f"no complete reply within the {self.deadline:g} s deadline from {url}",
                maybe_processed=True, kind="deadline",
            ) from None
        except ResponseTooLarge:
            raise TransientFailure(
                f"reply from {url} over the {self.max_reply_bytes}-byte cap; not read further",
                maybe_processed=True, kind="too_large",
            ) from None
        except requests.exceptions.ConnectTimeout as exc:
            raise TransientFailure(f"connect timeout to {url}: {exc}", kind="connect_timeout") from None
        except requests.exceptions.ReadTimeout:
            # The request was sent: the server may have acted on it.
            raise TransientFailure(
                f"read timeout after {self.timeout[1]} s from {url}", maybe_processed=True, kind="read_timeout"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            sent = not _is_connect_failure(exc)
            raise TransientFailure(
                f"connection failed for {url}: {_brief(exc)}", maybe_processed=sent, kind="connection"
            ) from None
        except requests.exceptions.RequestException as exc:  # e.g. ChunkedEncodingError mid-body
            raise TransientFailure(f"transport error from {url}: {_brief(exc)}", maybe_processed=True) from None

        if reply.status_code != 200:
            failure_class = TransientFailure if reply.status_code in TRANSIENT_STATUSES else PermanentFailure
            header = reply.headers.get("Retry-After")
            retry_after = parse_retry_after(header, maximum=self.retry_after_max)
            ignored = ""
            if header and retry_after is None:
                ignored = f" (Retry-After {_brief(header, 40)!r} ignored: not a delay of at most {self.retry_after_max:g} s)"
                log.warning("UKSSDC reply HTTP %s from %s%s", reply.status_code, url, ignored)
            raise failure_class(
                f"HTTP {reply.status_code} {_brief(reply.reason, 80)} from {url}{ignored}",
                retry_after=retry_after,
                kind=f"http_{reply.status_code}",
                status_code=reply.status_code,
            )
        try:
            parsed = parse_json_reply(reply.content)
        except UnintelligibleReply as exc:
            # A 200 that is not the promised JSON: the server may still have acted on the request.
            raise TransientFailure(
                f"unintelligible reply from {url}: {exc}", maybe_processed=True, kind="unintelligible"
            ) from None
        self._log_deprecation(parsed)
        return parsed

    def _log_deprecation(self, payload: dict[str, Any]) -> None:
        warning = payload.get("deprecationWarning")
        if isinstance(warning, dict):
            kind = str(warning.get("type", ""))
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning("UKSSDC deprecation warning (%s): %s", kind, warning.get("message", ""))

    # -- endpoints ------------------------------------------------------------------------
    def cancel_job(self, user_id: str, job_id: int, shorts: list[str]) -> CancelReply:
        payload = self.call(CANCEL, {"UserID": user_id, "JobID": job_id, "what": ",".join(shorts)})
        try:
            return parse_cancel_reply(payload, shorts)
        except UnintelligibleReply as exc:
            raise TransientFailure(f"unintelligible canceljob reply: {exc}", maybe_processed=True) from None

    def product_states(self, user_id: str, job_id: int, shorts: list[str]) -> dict[str, int] | ServerError:
        """checkProductStatus.php: state code per short name (products it did not report are absent)."""
        status = self.product_status(user_id, job_id, shorts)
        if isinstance(status, ServerError):
            return status
        return {short: code for short, (code, _) in status.items()}

    def product_status(
        self, user_id: str, job_id: int, shorts: list[str]
    ) -> dict[str, tuple[int, str]] | ServerError:
        """checkProductStatus.php: (state code, state text) per short name it reported."""
        payload = self.call(CHECK_STATUS, {"UserID": user_id, "JobID": job_id, "what": ",".join(shorts)})
        if payload["OK"] == 0:
            return ServerError(str(payload.get("ERROR", "")))
        states: dict[str, tuple[int, str]] = {}
        for short in shorts:
            entry = payload.get(short)
            if isinstance(entry, dict) and type(entry.get("statusCode")) is int:  # bool is not a state
                text = entry.get("statusText")
                states[short] = (entry["statusCode"], text if isinstance(text, str) else "")
        return states

    def old_jobs(self, user_id: str) -> list[dict[str, Any]] | ServerError:
        """listOldJobs.php: the user's jobs, newest first."""
        payload = self.call(LIST_OLD_JOBS, {"UserID": user_id})
        if payload["OK"] == 0:
            return ServerError(str(payload.get("ERROR", "")))
        jobs = payload.get("jobs")
        if not isinstance(jobs, list):
            raise TransientFailure("unintelligible listOldJobs reply: no jobs list")
        return [job for job in jobs if isinstance(job, dict)]


def _is_connect_failure(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection was never made (refused, unresolvable), so nothing was sent."""
    text = repr(exc)
    return any(marker in text for marker in ("NewConnectionError", "NameResolutionError", "ConnectTimeout"))


def _brief(exc: object, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
