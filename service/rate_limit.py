"""The per-token rate limit of the HTTP API (Flask-Limiter, counters in the service's Redis).

One budget per token (`UKCANCEL_API_RATE_LIMIT`, e.g. "600 per minute") shared by every route and
every API process, since the counters live in the same Redis as the records (fakeredis in
embedded mode). Requests without a valid token are counted by client address, so a flood of bad
tokens is limited too. The console counts a signed-in session against its token's name, as the
API does, and its anonymous requests (the sign-in page) by address in a bucket of their own: a
flood of bad API tokens from behind the same reverse proxy locks no console user out. Over the
limit: 429 problem+json with `Retry-After`. The probes, the OpenAPI document and its /docs page
are never limited.

Cost: one Redis round trip per request, for the token, the limit and the length of the token
user's waiting line (which the queued-commands quota of a POST reads, `waiting_at_hit`)
together. Flask-Limiter's fixed window spends one on the hit and two more on the window's count
and expiry for the `X-RateLimit-*` headers, and the token lookup would be one more before it
(the bucket is the token's name). Here a request with a bearer token gets a provisional bucket
naming the token's digest; the storage's hit script reads the token's record, picks the bucket
(the token's name, or the client address when the token is unknown or revoked), counts the hit
and returns the window and the record in one reply. The record is the one `service.auth` then
uses (`bearer_record`), and the headers of the same request are answered from that reply.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, has_request_context, request, session
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address
from limits.storage import RedisStorage

from ukcancel.quota import API_RATE_LIMIT_PREFIX, WAITING_LINE_PREFIX
from ukcancel.runtime import Runtime
from ukcancel.service.auth import bearer_record, bearer_token, looked_up, remember_record
from ukcancel.service.docs import is_docs_path
from ukcancel.token import digest, record_key, record_of, well_formed

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

# KEYS[1] the token's record (ukcancel:token:{digest})
# ARGV[1] the token's digest   ARGV[2] the counter key up to the bucket   ARGV[3] the counter key
# after the bucket   ARGV[4] the bucket when the token is unknown (addr:{client address})
# ARGV[5] window length (s)   ARGV[6] amount   ARGV[7] the key prefix of the users' waiting lines
# The token's bucket is its name, known only once its record is read, so the counter's key is
# built here from ARGV[2..4] (not in KEYS: this service runs on one Redis server, not a cluster);
# so is the token's user's line, whose length the queued-commands quota reads (`ukcancel.quota`).
# The same fixed-window increment as _HIT. Returns {count, window's remaining seconds, the
# record's fields as HGETALL gives them (empty when the bucket is the address), the commands
# waiting in the token user's line (-1 when the token is unknown)}.
_HIT_WITH_TOKEN = """
local fields = redis.call('HGETALL', KEYS[1])
local name, user
for i = 1, #fields, 2 do
  if fields[i] == 'name' then name = fields[i + 1] end
  if fields[i] == 'user_id' then user = fields[i + 1] end
  if fields[i] == 'digest' and fields[i + 1] ~= ARGV[1] then fields = {}; name = nil; break end
end
local bucket = ARGV[4]
local waiting = -1
if name then
  bucket = 'token:' .. name
  if user then waiting = redis.call('LLEN', ARGV[7] .. user) end
else
  fields = {}
end
local counter = ARGV[2] .. bucket .. ARGV[3]
local current = redis.call('INCRBY', counter, ARGV[6])
if current == tonumber(ARGV[6]) then redis.call('EXPIRE', counter, ARGV[5]) end
return {current, redis.call('TTL', counter), fields, waiting}
"""

_WINDOWS = "ukcancel_rate_windows"  # flask.g attribute: key -> (count, window end) seen by this request
_WAITING = "ukcancel_rate_waiting"  # flask.g attribute: user id -> commands in the user's line at the hit
_PENDING = "ukcancel_rate_pending"  # flask.g attribute: (provisional bucket, token digest, address bucket)
PENDING_PREFIX = "bearer:"  # a provisional bucket: "bearer:{digest}", replaced by the hit script


class OneTripRedisStorage(RedisStorage):
    """limits' Redis storage whose hit also returns the window it counted in.

    `get` and `get_expiry` of a key this request has hit answer from that reply (the count as of
    this request's hit, as the headers describe); anything else reads Redis as usual.
    """

    STORAGE_SCHEME = ["ukcancel+redis"]

    def initialize_storage(self, _uri: str) -> None:
        super().initialize_storage(_uri)
        self.lua_hit_window = self.get_connection().register_script(_HIT)
        self.lua_hit_with_token = self.get_connection().register_script(_HIT_WITH_TOKEN)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        pending = g.get(_PENDING) if has_request_context() else None
        if pending is not None and pending[0] in key:
            provisional, token_digest, address = pending
            head, tail = self.prefixed_key(key).split(provisional, 1)
            count, ttl, fields, waiting = self.lua_hit_with_token(
                [record_key(token_digest)], [token_digest, head, tail, address, expiry, amount, WAITING_LINE_PREFIX]
            )
            record = record_of(dict(zip(fields[::2], fields[1::2])), token_digest)
            remember_record(record)
            if record is not None and int(waiting) >= 0:
                g.setdefault(_WAITING, {})[record.user_id] = int(waiting)
        else:
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


def waiting_at_hit(user_id: str) -> int | None:
    """The commands waiting in `user_id`'s line as this request's rate-limit hit read them (the
    token's own user only), so the queued-commands quota costs no round trip of its own; None
    when the hit did not read that line."""
    return g.get(_WAITING, {}).get(user_id) if has_request_context() else None


def _seen(key: str) -> tuple[int, float] | None:
    return g.get(_WINDOWS, {}).get(key) if has_request_context() else None


def rate_limit_key() -> str:
    """The bucket of this request: its token's name, else its client address.

    A bearer token not looked up yet gets a provisional bucket that the storage's hit resolves
    (see the module's docstring); it stays the key for the whole request, so the headers find
    the hit's window.
    Console requests carry no bearer token: a session counts against the name of the token it
    signed in with (a session cookie cannot be made without the console's secret), and the
    console's anonymous requests by address apart from the API's.
    """
    if request.path == "/console" or request.path.startswith("/console/"):
        held = session.get("console")
        if isinstance(held, dict) and isinstance(held.get("name"), str) and held.get("sid"):
            return f"token:{held['name']}"
        return f"console-addr:{get_remote_address()}"
    pending = g.get(_PENDING)
    if pending is not None:
        return pending[0]
    address = f"addr:{get_remote_address()}"
    if looked_up():
        record = bearer_record()
        return f"token:{record.name}" if record is not None else address
    token = bearer_token()
    if token is None or not well_formed(token):
        return address  # never looked up: no record
    token_digest = digest(token)
    g.setdefault(_PENDING, (PENDING_PREFIX + token_digest, token_digest, address))
    return PENDING_PREFIX + token_digest


def install_rate_limit(app: Flask, runtime: Runtime) -> Limiter:
    # Registered before the limiter's own after_request, so it runs after it (Flask runs them in
    # reverse): Flask-Limiter adds Retry-After to every answer, but on anything but a 429/503 it
    # would read as "come back later" to clients that honour it.
    @app.after_request
    def retry_after_only_when_told_to_wait(response: Response) -> Response:
        if response.status_code not in (429, 503) and "Retry-After" in response.headers:
            del response.headers["Retry-After"]
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
        key_prefix=API_RATE_LIMIT_PREFIX,
        headers_enabled=True,  # X-RateLimit-* on every answer, Retry-After on a 429
    )
    limiter.request_filter(lambda: request.path in OPEN_PATHS or is_docs_path(request.path))
    _skip_on_open_paths(app, limiter)
    return limiter


def _skip_on_open_paths(app: Flask, limiter: Limiter) -> None:
    """The probes, the metrics and the OpenAPI document skip the limiter's hooks altogether.

    Its request filter exempts them too, but only after the limiter has resolved the endpoint and
    its limits, and its after_request and teardown would still run: a probe answered thousands of
    times a second pays for nothing it uses. The filter stays for the docs pages.
    """

    def unless_open(hook: Callable[..., Any], passthrough: bool) -> Callable[..., Any]:
        @functools.wraps(hook)
        def wrapped(*args: Any) -> Any:
            if has_request_context() and request.path in OPEN_PATHS:
                return args[0] if passthrough else None
            return hook(*args)

        return wrapped

    for registry, passthrough in ((app.before_request_funcs, False), (app.after_request_funcs, True),
                                  (app.teardown_request_funcs, False)):
        hooks = registry.get(None, [])
        for i, hook in enumerate(hooks):
            owner = getattr(hook, "__self__", None) or (hook.args[0] if isinstance(hook, functools.partial) else None)
            if owner is limiter:
                hooks[i] = unless_open(hook, passthrough)
