"""The version of the Redis key layout, and the migration to this release's layout at start-up.

Redis is the service's whole state, and releases have changed how it is laid out. The layout's
number is kept in ``ukcancel:layout`` (a hash: version, release, migrated_at):

    1   ukssdc-cancel 0.1.0: a running command is claimed in ``ukcancel:fair:claims`` (Celery task
        id -> command id); no marker in Redis.
    2   0.2.0: claims are leases (``ukcancel:leases``, ``ukcancel:lease:holders``); no marker.
    3   0.3.0: as 2, marked in ``ukcancel:layout``; the keys 0.3.0 adds are written as work goes.

Every process that works on the state (`ukcancel worker`, `ukcancel stream-consumer`, the API
under gunicorn) calls `ensure_layout` before it starts. One process across the fleet migrates
(it holds ``ukcancel:layout:lock``); the others wait for the version to be written. A layout newer
than this release knows stops the process with `LayoutTooNew`, naming both versions: a 0.3.0
process never works on a layout it does not understand. Releases before 0.3.0 do not read the
marker (see docs/operators/high-availability.md, "Upgrades", for what that means for a rolling
update).

From layout 1: each claimed command that is not finished becomes a lease that has already
expired, so the next turn takes it over (the worker that held it is gone with the old release).
From layout 2 nothing moves: the key names are this release's.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import redis

from ukcancel import __version__, keys
from ukcancel.store import as_text, as_text_dict, delete_if_held

log = logging.getLogger(__name__)

CURRENT_LAYOUT = 3
RELEASES = {1: "0.1.0", 2: "0.2.0", 3: "0.3.0"}
LOCK_SECONDS = 60
TERMINAL_STATES = ("completed", "aborted")


class LayoutTooNew(RuntimeError):
    """Redis holds a layout written by a newer release than this process."""


class LayoutMigrationTimeout(RuntimeError):
    """Another process holds the migration lock and did not finish in time."""


def release_of(layout: int) -> str:
    return RELEASES.get(layout, f"a release newer than {__version__}")


def stored_layout(connection: redis.Redis) -> int | None:
    """The layout Redis holds: the marker's version, else 1 or 2 from what is there; None when empty."""
    version = connection.hget(keys.LAYOUT, "version")
    if version is not None:
        return int(version)
    if connection.exists(keys.LEGACY_FAIR_CLAIMS):
        return 1
    for _ in connection.scan_iter(match=f"{keys.PREFIX}:*", count=1000):
        return 2
    return None


def ensure_layout(
    connection: redis.Redis,
    *,
    wait_seconds: float = 2 * LOCK_SECONDS,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Make sure Redis holds this release's layout, migrating it once across the fleet.

    Returns the layout version found before (None counts as `CURRENT_LAYOUT`: a fresh database).
    Raises `LayoutTooNew` when a newer release wrote it, `LayoutMigrationTimeout` when another
    process's migration does not end within `wait_seconds`.
    """
    deadline = clock() + wait_seconds
    token = uuid.uuid4().hex
    while True:
        found = stored_layout(connection)
        if found == CURRENT_LAYOUT:
            return found
        if found is not None and found > CURRENT_LAYOUT:
            written_by = connection.hget(keys.LAYOUT, "release")
            raise LayoutTooNew(
                f"Redis holds key layout {found} (written by ukssdc-cancel "
                f"{as_text(written_by) if written_by else release_of(found)}); this is "
                f"ukssdc-cancel {__version__} (layout {CURRENT_LAYOUT}), which cannot work on it: run the newer release"
            )
        if connection.set(keys.LAYOUT_LOCK, token, nx=True, ex=LOCK_SECONDS):
            try:
                found = stored_layout(connection)  # another process may have finished meanwhile
                if found is None or found < CURRENT_LAYOUT:
                    migrate(connection, found, clock)
                return found if found is not None else CURRENT_LAYOUT
            finally:
                delete_if_held(connection, keys.LAYOUT_LOCK, token)
        if clock() >= deadline:
            holder = connection.get(keys.LAYOUT_LOCK)
            raise LayoutMigrationTimeout(
                f"the layout migration held by {as_text(holder) if holder else 'another process'} did not end "
                f"within {wait_seconds:g} s"
            )
        sleep(0.2)


def ensure_layout_at_start(connection: redis.Redis, redis_wait_seconds: float = 120.0) -> int | None:
    """`ensure_layout`, waiting up to `redis_wait_seconds` for Redis to answer (as Celery waits for
    its broker); the last `redis.RedisError` is raised after that."""
    deadline = time.monotonic() + redis_wait_seconds
    delay = 0.5
    while True:
        try:
            return ensure_layout(connection)
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("Redis not reachable yet (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def migrate(connection: redis.Redis, found: int | None, clock: Callable[[], float] = time.time) -> None:
    """Bring layout `found` (None: an empty database) to `CURRENT_LAYOUT` and mark it. Holder of the lock only."""
    if found is not None:
        log.warning("migrating the Redis key layout %d (ukssdc-cancel %s) to %d (%s)",
                    found, release_of(found), CURRENT_LAYOUT, __version__)
    if found == 1:
        _claims_to_leases(connection)
    connection.hset(keys.LAYOUT, mapping={
        "version": CURRENT_LAYOUT, "release": __version__, "migrated_at": repr(clock()),
    })


def _claims_to_leases(connection: redis.Redis) -> None:
    """0.1.0's claims (task id -> command id) as expired leases: the next turn takes each over."""
    claims = as_text_dict(connection.hgetall(keys.LEGACY_FAIR_CLAIMS))
    moved = 0
    for task_id, command_id in claims.items():
        state = connection.hget(keys.command(command_id), "state")
        if state is None or as_text(state) in TERMINAL_STATES:
            continue
        with connection.pipeline() as pipe:
            pipe.zadd(keys.LEASES, {command_id: 0}, nx=True)
            pipe.hsetnx(keys.LEASE_HOLDERS, command_id, f"migrated-claim:{task_id}")
            pipe.execute()
        moved += 1
    connection.delete(keys.LEGACY_FAIR_CLAIMS)
    log.warning("layout 1 -> 2: %d claimed command(s) of 0.1.0 are now expired leases", moved)
