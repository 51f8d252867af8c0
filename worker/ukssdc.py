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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class UkssdcClient:
    """POSTs JSON to the UKSSDC endpoints and reads their replies."""

    _warned: set[str] = set()  # deprecation warning types already logged by this process

    def __init__(
        self,
        base_url: str,
        api_version: str,
        connect_timeout: float,
        read_timeout: float,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()

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
            reply = self.session.post(url, json=payload, timeout=self.timeout, allow_redirects=False)
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
            raise failure_class(
                f"HTTP {reply.status_code} {reply.reason} from {url}",
                retry_after=parse_retry_after(reply.headers.get("Retry-After")),
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


def _brief(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
