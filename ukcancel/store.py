"""The service's Redis: how a process connects to it, and how its replies are read as text.

Connections are made without `decode_responses`, so bytes come back; `as_text` is the one place
they are turned into text (rq's `utils.as_text` plays the same part).
"""

from __future__ import annotations

import redis

from ukcancel.settings import Settings


def connect_redis(settings: Settings) -> redis.Redis:
    """A client for `REDIS_URL`, or an in-process fakeredis server when it is unset."""
    if settings.redis_url is None:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_timeout=70)


def as_text(value: bytes | str) -> str:
    """A reply value as text (invalid UTF-8 is replaced, never raised: stream entries come from anyone)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def as_text_dict(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (HGETALL) or stream entry with keys and values as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}
