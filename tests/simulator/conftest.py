"""A fresh simulator per test, on a free port, with the default seeded job table."""

from collections.abc import Iterator

import pytest

from ukcancel.simulator import SimulatorServer, SimulatorState


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(state=SimulatorState()) as sim:
        yield sim
