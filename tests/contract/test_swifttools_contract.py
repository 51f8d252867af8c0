"""The official UKSSDC client (swifttools 4.0.5) against the simulator.

This shows two things at once: the simulator answers in the shapes the official client
understands, and it receives exactly what the official client sends. It also pins down the
client's known defects (listed in the protocol notes), so the project's own client can be
seen to differ from it on purpose.

swifttools is a required test dependency: a missing install must fail here, not skip.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from swifttools.ukssdc.xrt_prods import XRTProductRequest, prod_request

from ukcancel.simulator import Fault, SimulatorServer, SimulatorState

ASTRO = "astro@example.org"
PRODUCTION_BASE = "https://www.swift.ac.uk/user_objects"
Adopt = Callable[..., XRTProductRequest]  # the `swifttools_request` fixture of tests/conftest.py

# The client compares API versions with a deprecated standard-library class; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(state=SimulatorState()) as server:
        yield server


def test_cancel_light_curve_then_everything_as_in_the_user_guide(sim: SimulatorServer, swifttools_request: Adopt) -> None:
    request = swifttools_request(sim, ASTRO, 1001, "LightCurve", "StandardPos")

    assert request.cancelProducts(["LightCurve"]) == (1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}})

    status, detail = request.cancelProducts()
    assert detail == {
        "LightCurve": {"code": 1, "text": "Job could not be cancelled - has it already finished?"},
        "StandardPos": {"code": 0, "text": "Job cancelled OK"},
    }
    # Known defect of the official client: a product was not cancelled, so the protocol's
    # answer is 2 (partial) -- the simulator does say OK 2, see below -- but the client says 1.
    assert status == 1
    assert sim.state.product_state(1001, "lc") == -4
    assert sim.state.product_state(1001, "psf") == -4

    # The same two cancellations, asked directly of a fresh simulator: OK 1, then OK 2.
    with SimulatorServer(state=SimulatorState()) as fresh:
        oks = [
            json.loads(requests.post(f"{fresh.base_url}/canceljob.php", json=entry["body"], timeout=5).text)["OK"]
            for entry in sim.state.log()
        ]
    assert oks == [1, 2]


def test_simulator_receives_what_the_official_client_sends(sim: SimulatorServer, swifttools_request: Adopt) -> None:
    request = swifttools_request(sim, ASTRO, 1001, "LightCurve", "StandardPos")
    request.cancelProducts(["LightCurve"])
    request.checkProductStatus()

    cancel, status = sim.state.log()
    assert cancel["endpoint"] == "canceljob.php"
    assert cancel["body"] == {
        "UserID": ASTRO,
        "JobID": 1001,
        "what": "lc",
        "api_name": "xrt_prods",
        "api_version": XRTProductRequest._apiVer,
    }
    assert cancel["body"]["api_version"] == "1.12"
    assert status["endpoint"] == "checkProductStatus.php"
    assert status["body"]["what"] == "lc,psf"
    assert status["body"]["api_name"] == "xrt_prods"


def test_official_client_reads_product_status(sim: SimulatorServer, swifttools_request: Adopt) -> None:
    request = swifttools_request(sim, ASTRO, 1001, "LightCurve", "StandardPos")
    request.cancelProducts(["LightCurve"])
    states = request.checkProductStatus()
    assert states["LightCurve"]["statusCode"] == -4
    assert states["LightCurve"]["statusText"] == "Cancelled by the user"
    assert states["StandardPos"]["statusCode"] == 2


def test_official_client_reports_refusal_as_transport_failure(sim: SimulatorServer, swifttools_request: Adopt) -> None:
    # Known defect: OK 0 (not the owner) comes back as -1 rather than the documented 0.
    request = swifttools_request(sim, "other@example.org", 1001, "LightCurve")
    status, detail = request.cancelProducts()
    assert status == -1
    assert "not owned by user other@example.org" in detail["ERROR"]
    assert sim.state.product_state(1001, "lc") == 3


def test_official_client_gives_up_at_once_on_503(sim: SimulatorServer, swifttools_request: Adopt) -> None:
    # Known defect: no retry; one 503 is a -1.
    sim.state.add_faults(Fault("http503", retry_after=1))
    request = swifttools_request(sim, ASTRO, 1001, "LightCurve")
    status, detail = request.cancelProducts()
    assert status == -1
    assert "503" in detail["ERROR"]
    assert len(sim.state.log()) == 1


@pytest.mark.parametrize("kind", ["truncated", "html200", "garbled"])
def test_official_client_raises_on_a_200_that_is_not_json(sim: SimulatorServer, swifttools_request: Adopt, kind: str) -> None:
    # Known defect: the decoding error escapes instead of a (-1, ...) result.
    sim.state.add_faults(Fault(kind))
    request = swifttools_request(sim, ASTRO, 1001, "LightCurve")
    with pytest.raises(json.JSONDecodeError):
        request.cancelProducts()


def test_official_client_passes_outcome_unknown_through(sim: SimulatorServer, swifttools_request: Adopt) -> None:
    sim.state.add_faults(Fault("codes", codes={"lc": 4}))
    request = swifttools_request(sim, ASTRO, 1001, "LightCurve")
    status, detail = request.cancelProducts()
    assert status == 1
    assert detail["LightCurve"]["code"] == 4


class _RedirectToSimulator:
    """Stands in for the `requests` module inside the client, sending production URLs to the simulator.

    The client's module-level `listOldJobs` and `countActiveJobs` hard-code the production base
    URL, so they can only be pointed at the simulator by rewriting the URL on the way out.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        assert url.startswith(PRODUCTION_BASE)
        return requests.post(self.base_url + url[len(PRODUCTION_BASE) :], timeout=5, **kwargs)


def test_official_client_lists_old_jobs_and_counts_active_ones(
    sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prod_request, "requests", _RedirectToSimulator(sim.base_url))
    jobs = prod_request.listOldJobs(ASTRO)
    assert [job["JobID"] for job in jobs] == [1002, 1001, 1003]
    assert jobs[1]["LightCurve"] is True and jobs[1]["Spectrum"] is False
    assert prod_request.countActiveJobs(ASTRO) == 2
    assert [entry["body"]["api_name"] for entry in sim.state.log()] == ["xrt_prods", "xrt_prods"]
