"""The Python client against the official client (swifttools 4.0.5), on identical simulators.

The per-product dict must be the same; the status may differ only where the official client's
known defect reports 1 for a partial cancellation (the protocol's 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ukcancel.client import Client
from ukcancel.simulator import SimulatorServer, SimulatorState

ASTRO = "astro@example.org"
Served = Any  # the `served` fixture of tests/cli/conftest.py

pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")


@pytest.fixture
def official_sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(state=SimulatorState()) as server:
        yield server


@pytest.mark.parametrize(
    ("job_id", "products", "steps"),
    [
        (1001, ("LightCurve", "StandardPos"), [["LightCurve"], "all"]),  # the guide's scenario
        (1002, ("LightCurve", "Spectrum", "StandardPos", "AstromPos"), [["Spectrum", "StandardPos"], "all"]),
        (1003, ("LightCurve", "Spectrum"), ["all"]),  # nothing left to cancel
    ],
)
def test_same_detail_as_the_official_client_status_differs_only_by_its_defect(
    served: Served, official_sim: SimulatorServer, swifttools_request: Callable[..., Any], job_id: int,
    products: tuple[str, ...], steps: list,
) -> None:
    ours = Client(served.url, served.token)
    theirs = swifttools_request(official_sim, ASTRO, job_id, *products)
    for what in steps:
        official_status, official_detail = theirs.cancelProducts() if what == "all" else theirs.cancelProducts(what)
        status, detail = ours.cancel_products(job_id, what)  # type: ignore[misc]

        assert detail == official_detail
        partial = any(entry["code"] != 0 for entry in detail.values())
        assert status == (2 if partial else 1)
        assert official_status == 1  # the official client's defect: 1 even when partial
    # Both servers ended in the same state.
    assert served.simulator.state.job(job_id) == official_sim.state.job(job_id)


def test_batch_items_carry_the_same_tuples_as_single_cancellations(served: Served) -> None:
    client = Client(served.url, served.token)
    batch_id = client.submit_batch([(1001, ["LightCurve"]), {"job_id": 1003, "products": "all"}])
    seen: list[float] = []
    view = client.wait_batch(batch_id, progress=lambda v: seen.append(v["done_fraction"]))
    assert view["state"] == "completed" and seen[-1] == 1.0
    assert [item["result"] for item in view["items"]] == [
        [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}],
        [2, {"LightCurve": {"code": 1, "text": "Job could not be cancelled - has it already finished?"},
             "Spectrum": {"code": 1, "text": "Job could not be cancelled - has it already finished?"}}],
    ]
    assert client.get_batch(batch_id, limit=1)["next_cursor"] == "1"
    with pytest.raises(ValueError):
        client.submit_batch()
