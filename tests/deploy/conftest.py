"""Figures the deployment tests measure (image build and run times, image size), printed at the
end of the run so that every run of the README's test command shows them."""

from __future__ import annotations

import pytest

MEASUREMENTS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def deploy_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines to print in the run's summary."""
    return request.config.stash.setdefault(MEASUREMENTS, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(MEASUREMENTS, [])
    if lines:
        terminalreporter.section("deployment measurements")
        for line in lines:
            terminalreporter.write_line(line)
