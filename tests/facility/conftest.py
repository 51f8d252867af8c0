"""Fixtures of the facility tests.

`facility` is embedded (fakeredis store, in-memory broker, no worker: commands stay queued);
`facility_on_redis` uses this test's own database of the real Redis server, broker included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from facility_api import Facility, build_facility

from ukcancel.settings import Settings


@pytest.fixture
def make_facility() -> Callable[..., Facility]:
    """Build an embedded facility with settings changed as given."""
    return lambda **changes: build_facility(Settings(**changes))


@pytest.fixture
def facility(make_facility: Callable[..., Facility]) -> Facility:
    return make_facility()


@pytest.fixture
def facility_on_redis(redis_url: str) -> Iterator[Facility]:
    built = build_facility(Settings(redis_url=redis_url))
    yield built
    built.runtime.connection.close()
