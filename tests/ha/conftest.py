"""Fixtures of the high-availability tests: a Sentinel-watched Redis of the test's own (`sentinels.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sentinels import SentinelSet  # tests/ha/sentinels.py


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    directory = tmp_path / "ha"
    directory.mkdir()
    ha = SentinelSet(directory)
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()
