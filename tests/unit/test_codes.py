"""The UKSSDC's codes (`ukcancel.codes`): the protocol's numbers, and every reader agreeing on them."""

from __future__ import annotations

import json

from ukcancel import codes, jobs, outcome
from ukcancel.codes import CancelCode, ProductState


def test_the_members_are_the_protocols_numbers() -> None:
    assert {state.name: int(state) for state in ProductState} == {
        "CANCELLED_BY_USER": -4, "BUILT_NOTHING": -3, "FAILED_INTERNAL": -2, "FAILED_TO_START": -1,
        "REQUESTED": 1, "QUEUED": 2, "RUNNING": 3, "COMPLETED": 4, "WAITING_FOR_POSITION": 5,
    }
    assert [int(code) for code in CancelCode] == [0, 1, 2, 3, 4]
    assert codes.ACTIVE_STATES == {1, 2, 3, 5} and codes.FINISHED_STATES == {4, -1, -2, -3}
    assert codes.CANCELLED_STATES == {-4}


def test_they_are_stored_and_shown_as_numbers() -> None:
    assert json.dumps([CancelCode.NO_RECORD, {"code": CancelCode.CANCELLED}]) == '[2, {"code": 0}]'
    assert str(ProductState.CANCELLED_BY_USER) == "-4" and f"{CancelCode.OUTCOME_UNKNOWN}" == "4"


def test_every_reader_takes_the_codes_from_their_one_home() -> None:
    assert jobs.STATE_FILTERS == {"active": codes.ACTIVE_STATES, "finished": codes.FINISHED_STATES,
                                  "cancelled": codes.CANCELLED_STATES}
    assert set(jobs.STATE_TEXTS) == set(ProductState)
    assert outcome.PRODUCT_CODES == set(CancelCode)
    # No second name for a code: its readers import `ukcancel.codes` rather than an alias of it.
    aliases = {"ACTIVE_STATES", "CANCELLED", "NO_RECORD", "NOT_CANCELLED_FINISHED", "OUTCOME_UNKNOWN", "CANCELLED_BY_USER"}
    assert not aliases & set(vars(outcome))
