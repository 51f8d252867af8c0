"""The per-token rate limit of the HTTP API (Flask-Limiter, counters in the service's Redis).

One budget per token (`UKCANCEL_API_RATE_LIMIT`, e.g. "600 per minute") shared by every route and
every API process, since the counters live in the same Redis as the records (fakeredis in
embedded mode). Requests without a valid token are counted by client address, so a flood of bad
tokens is limited too. Over the limit: 429 problem+json with `Retry-After`. The probes and the
OpenAPI document are never limited.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address

from ukcancel import keys
from ukcancel.runtime import Runtime
from ukcancel.service.auth import bearer_record

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})


def rate_limit_key() -> str:
    """The bucket of this request: its token's name, else its client address."""
    record = bearer_record()
    return f"token:{record.name}" if record is not None else f"addr:{get_remote_address()}"


def install_rate_limit(app: Flask, runtime: Runtime) -> Limiter:
    # Registered before the limiter's own after_request, so it runs after it (Flask runs them in
    # reverse): Flask-Limiter adds Retry-After to every answer, but on anything but a 429/503 it
    # would read as "come back later" to clients that honour it.
    @app.after_request
    def retry_after_only_when_told_to_wait(response: Response) -> Response:
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        return response

    limiter = Limiter(
        rate_limit_key,
        app=app,
        # One budget across all routes.
        application_limits=[
            ApplicationLimit(
                limit_provider=runtime.settings.api_rate_limit,
                error_message=f"Rate limit of this token ({runtime.settings.api_rate_limit}) exceeded; "
                "retry after the number of seconds in Retry-After.",
            )
        ],
        storage_uri="redis://",
        # The runtime's own pool: the same database as the records, and fakeredis when embedded.
        storage_options={"connection_pool": runtime.connection.connection_pool},  # type: ignore[dict-item]
        strategy="fixed-window",
        key_prefix=keys.API_LIMITER_PREFIX,
        headers_enabled=True,  # X-RateLimit-* on every answer, Retry-After on a 429
    )
    limiter.request_filter(lambda: request.path in OPEN_PATHS)
    return limiter
