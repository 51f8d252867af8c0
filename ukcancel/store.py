"""The service's Redis: how a process connects to it, and how its replies are read as text.

Connections are made without `decode_responses`, so bytes come back; `as_text` is the one place
they are turned into text (rq's `utils.as_text` plays the same part).

With `UKCANCEL_REDIS_SENTINELS` the client asks the Sentinels for the master
(`redis.sentinel.Sentinel.master_for`) whenever it opens a connection, so every user of the one
client (registries, the event listener's pub/sub, the stream consumer, the CLI) follows a
failover: connections to the lost master fail, the next ones go to the promoted replica.
`REDIS_URL` then gives only the database number and the credentials. Each new connection learns
the master's `run_id`; when it differs from the one the process knew, the callbacks in
`master_watchers(client)` are told (`ukcancel.failover` pauses the fleet then).

`confirm_replicas` is the `WAIT` that makes an accepted write survive a failover: it returns once
`min_replicas` replicas hold everything written so far, and raises `ReplicasUnconfirmed` otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from ukcancel import keys
from ukcancel.settings import Settings

log = logging.getLogger(__name__)

MasterWatcher = Callable[[str], None]


class ReplicasUnconfirmed(RuntimeError):
    """Fewer replicas than asked acknowledged a write within the timeout: a failover now could lose it."""

    def __init__(self, wanted: int, confirmed: int, timeout_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed the write within {timeout_ms} ms")
        self.wanted = wanted
        self.confirmed = confirmed


def connect_redis(settings: Settings) -> redis.Redis:
    """A client for `REDIS_URL` (through Sentinel when it is set), or an in-process fakeredis server
    when `REDIS_URL` is unset."""
    if settings.redis_url is None:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    if settings.sentinel:
        return _sentinel_client(settings)
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_timeout=70)


class _TellsOfNewMasters:
    """A connection to the master Sentinel names, which tells the client's watchers of a new master."""

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health)  # type: ignore[misc]
        self.send_command("INFO", "server")  # type: ignore[attr-defined]
        info = self.read_response()  # type: ignore[attr-defined]
        run_id = _info_field(info, "run_id")
        # The pool proxy carries the watch (`_sentinel_client`).
        watch: _Watch | None = getattr(self.connection_pool, "watch", None)  # type: ignore[attr-defined]
        if watch is not None and run_id:
            watch.seen(run_id)


class _Watch:
    """The master run_id a process last connected to, and who to tell when it changes."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.watchers: list[MasterWatcher] = []
        self._lock = threading.Lock()

    def seen(self, run_id: str) -> None:
        with self._lock:
            if run_id == self.run_id:
                return
            previous, self.run_id = self.run_id, run_id
            watchers = list(self.watchers)
        if previous is not None:
            log.warning("Redis master changed (run_id %s -> %s)", previous, run_id)
        for watcher in watchers:
            try:
                watcher(run_id)
            except redis.RedisError as exc:  # told again by the periodic check (`ukcancel.failover`)
                log.warning("master-change watcher failed: %s", exc)


class _MasterFollowingConnection(_TellsOfNewMasters, SentinelManagedConnection):
    pass


class _MasterFollowingSSLConnection(_TellsOfNewMasters, SentinelManagedSSLConnection):
    """The same over TLS (`REDIS_URL=rediss://...`)."""


def _info_field(info: object, name: str) -> str | None:
    if isinstance(info, dict):
        value = info.get(name)
        return as_text(value) if value is not None else None
    text = as_text(info) if isinstance(info, (bytes, str)) else ""
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return None


def _sentinel_client(settings: Settings) -> redis.Redis:
    assert settings.redis_url is not None and settings.redis_sentinel_master is not None
    parts = urlsplit(settings.redis_url)
    database = int(parts.path.strip("/") or 0)
    sentinel_kwargs = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(
        list(settings.redis_sentinels),
        sentinel_kwargs=sentinel_kwargs,
        socket_connect_timeout=2.0,
    )
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        connection_class=_MasterFollowingSSLConnection if parts.scheme == "rediss" else _MasterFollowingConnection,
        db=database,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        socket_timeout=70,
        health_check_interval=30,
    )
    client.connection_pool.proxy.watch = _Watch()
    return client


def master_watchers(client: redis.Redis) -> list[MasterWatcher] | None:
    """The callbacks told a new master's run_id (a client through Sentinel); None for other clients."""
    pool = getattr(client, "connection_pool", None)
    watch = getattr(getattr(pool, "proxy", None), "watch", None)
    return watch.watchers if isinstance(watch, _Watch) else None


def confirm_replicas(connection: redis.Redis, min_replicas: int, timeout_ms: int) -> None:
    """Return once `min_replicas` replicas hold every write made before this call; else raise
    `ReplicasUnconfirmed` after `timeout_ms`. No-op when `min_replicas` is 0.

    `WAIT` waits for the writes of its own connection, and a pooled client may have made the
    write on another one; so a write (``ukcancel:replicas:probe``) goes first on the same
    connection: once a replica has it, it has everything the master held before it.
    """
    if min_replicas <= 0:
        return
    with connection.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICA_PROBE)
        pipe.execute_command("WAIT", min_replicas, timeout_ms)
        _, confirmed = pipe.execute()
    if int(confirmed) < min_replicas:
        raise ReplicasUnconfirmed(min_replicas, int(confirmed), timeout_ms)


# KEYS[1] a lease or lock holding its holder's token   ARGV[1] that token
# Deletes the key only if it still holds this token (one that expired may have been taken by
# another holder since); returns 1 if deleted.
_DELETE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def delete_if_held(connection: redis.Redis, key: str, token: str) -> bool:
    """Give back the lease or lock `key` only if `token` still holds it (one script, so a holder
    whose lease expired never deletes its successor's)."""
    return bool(connection.eval(_DELETE_IF_HELD, 1, key, token))


def as_text(value: bytes | str) -> str:
    """A reply value as text (invalid UTF-8 is replaced, never raised: stream entries come from anyone)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def as_text_dict(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (HGETALL) or stream entry with keys and values as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}
