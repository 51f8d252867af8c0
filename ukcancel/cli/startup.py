"""What every long-running process does with the store before it starts working: the key layout.

`prepare_store` runs `ukcancel.layout.ensure_layout_at_start` (the migration to this release's
layout, once across the fleet, waiting for Redis while it does not answer yet). A layout this
release cannot work on stops the process with a message that names both versions.
"""

from __future__ import annotations

import click
import redis

from ukcancel.layout import LayoutMigrationTimeout, LayoutTooNew, ensure_layout_at_start


def prepare_store(connection: redis.Redis, redis_wait_seconds: float = 120.0) -> None:
    try:
        ensure_layout_at_start(connection, redis_wait_seconds)
    except (LayoutTooNew, LayoutMigrationTimeout) as exc:
        raise click.ClickException(f"refusing to start: {exc}") from None
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis did not answer within {redis_wait_seconds:g} s: {exc}") from None
