"""The Python client takes the official client's `XRTProductRequest`, as the user guide's
`myReq.cancelProducts(...)` does, and returns the same tuple; tested with the real `swifttools`."""

from __future__ import annotations

from typing import Any

import pytest
from swifttools.ukssdc.xrt_prods import XRTProductRequest

from ukcancel.client import Client

# The official client compares API versions with a deprecated standard-library class; not our concern.
ASTRO = "astro@example.org"  # the served runtime's user (tests/cli/conftest.py)

pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")


def test_cancel_products_reads_like_the_guide_with_a_request_object(served: Any, swifttools_request: Any) -> None:
    myReq = swifttools_request(served.simulator, ASTRO, 1001, "LightCurve", "StandardPos")  # noqa: N806
    client = Client(served.url, served.token)

    cancelStatus = client.cancel_products(myReq, ("LightCurve",))  # noqa: N806
    assert cancelStatus == (1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}})

    # "all": the request's own products (LightCurve and StandardPos), as cancelProducts() sends them.
    ok, cancelStatus = client.cancel_products(myReq)  # noqa: N806
    assert ok == 2
    assert cancelStatus == {
        "LightCurve": {"code": 1, "text": "Job could not be cancelled - has it already finished?"},
        "StandardPos": {"code": 0, "text": "Job cancelled OK"},
    }
    cancelled = [entry["body"] for entry in served.simulator.state.log() if entry["endpoint"] == "canceljob.php"]
    assert [body["JobID"] for body in cancelled] == [1001, 1001]
    assert [body["what"] for body in cancelled] == ["lc", "lc,psf"]  # "all": the request's two products


def test_a_request_never_submitted_is_refused_as_swifttools_refuses_it(served: Any) -> None:
    request = XRTProductRequest(ASTRO, silent=True)
    request.addProduct("LightCurve")
    with pytest.raises(RuntimeError, match="not set until the request is successfully submitted"):
        Client(served.url, served.token).cancel_products(request)


def test_anything_else_is_a_type_error(served: Any) -> None:
    client = Client(served.url, served.token)
    for job in (True, "1001", 10.5, object()):
        with pytest.raises(TypeError):
            client.cancel_products(job)


def test_the_readme_example_as_printed(served: Any, swifttools_request: Any) -> None:
    myReq = swifttools_request(served.simulator, ASTRO, 1001, "LightCurve", "StandardPos")  # noqa: N806
    cancelStatus = Client(served.url, served.token).cancel_products(myReq, ('LightCurve', 'StandardPos'))  # noqa: N806
    assert str(cancelStatus) == ("(1, {'LightCurve': {'code': 0, 'text': 'Job cancelled OK'}, "
                                 "'StandardPos': {'code': 0, 'text': 'Job cancelled OK'}})")
