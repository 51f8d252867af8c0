"""The per-token rate limit of the HTTP API (Flask-Limiter, counters in the service's Redis).

One budget per token (`UKCANCEL_API_RATE_LIMIT`, e.g. "600 per minute") shared by every route and
every API process, since the counters live in the same Redis as the records (fakeredis in
embedded mode). Requests without a valid token are counted by client address, so a flood of bad
tokens is limited too. The console counts a signed-in session against its token's name, as the
API does, and its anonymous requests (the sign-in page) by address in a bucket of their own: a
flood of bad API tokens from behind the same reverse proxy locks no console user out. Over the limit: 429 problem+json with `Retry-After`. The probes, the
OpenAPI document and its /docs page are never limited.

Cost: one Redis round trip per request. Flask-Limiter's fixed window spends one on the hit and
two more on the window's count and expiry for the `X-RateLimit-*` headers; the storage here reads
both in the hit's own script and answers the headers of the same request from that reply.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, has_request_context, request, session
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address
from limits.storage import RedisStorage

from ukcancel import keys
from ukcancel.runtime import Runtime
from ukcancel.service.auth import bearer_record
from ukcancel.service.docs import is_docs_path

# Probes and scrapers carry no user token. /metrics is cheap instead (its store gauges are cached,
# `UKCANCEL_METRICS_CACHE_SECONDS`) and may require `UKCANCEL_METRICS_TOKEN`.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})

# KEYS[1] counter   ARGV[1] window length (s)   ARGV[2] amount
# limits' fixed-window increment (expiry set by the hit that opens the window), returning the
# count and the window's remaining seconds together.
_HIT = """
local current = redis.call('INCRBY', KEYS[1], ARGV[2])
if current == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {current, redis.call('TTL', KEYS[1])}
"""

_WINDOWS = "ukcancel_rate_windows"  # flask.g attribute: key -> (count, window end) seen by this request


class OneTripRedisStorage(RedisStorage):
    """limits' Redis storage whose hit also returns the window it counted in.

    `get` and `get_expiry` of a key this request has hit answer from that reply (the count as of
    this request's hit, as the headers describe); anything else reads Redis as usual.
    """

    STORAGE_SCHEME = ["ukcancel+redis"]

    def initialize_storage(self, _uri: str) -> None:
        super().initialize_storage(_uri)
        self.lua_hit_window = self.get_connection().register_script(_HIT)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        count, ttl = self.lua_hit_window([self.prefixed_key(key)], [expiry, amount])
        if has_request_context():
            g.setdefault(_WINDOWS, {})[key] = (int(count), max(int(ttl), 0) + time.time())
        return int(count)

    def get(self, key: str) -> int:
        seen = _seen(key)
        return seen[0] if seen is not None else super().get(key)

    def get_expiry(self, key: str) -> float:
        seen = _seen(key)
        return seen[1] if seen is not None else super().get_expiry(key)


def _seen(key: str) -> tuple[int, float] | None:
    return g.get(_WINDOWS, {}).get(key) if has_request_context() else None


def rate_limit_key() -> str:
    """The bucket of this request: its token's name, else its client address.

    Console requests carry no bearer token: a session counts against the name of the token it
    signed in with (a session cookie cannot be made without the console's secret), and the
    console's anonymous requests by address apart from the API's.
    """
    if request.path == "/console" or request.path.startswith("/console/"):
        held = session.get("console")
        if isinstance(held, dict) and isinstance(held.get("name"), str) and held.get("sid"):
            return f"token:{held['name']}"
        return f"console-addr:{get_remote_address()}"
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
        storage_uri="ukcancel+redis://",  # OneTripRedisStorage
        # The runtime's own pool: the same database as the records, and fakeredis when embedded.
        storage_options={"connection_pool": runtime.connection.connection_pool},  # type: ignore[dict-item]
        strategy="fixed-window",
        key_prefix=keys.API_LIMITER_PREFIX,
        headers_enabled=True,  # X-RateLimit-* on every answer, Retry-After on a 429
    )
    limiter.request_filter(lambda: request.path in OPEN_PATHS or is_docs_path(request.path))
    return limiter
