"""Reading UKSSDC replies and building the `(status, detail)` tuple (`ukcancel.outcome`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ukcancel.codes import CancelCode
from ukcancel.outcome import (
    PRODUCT_CODES,
    CancelReply,
    ProductOutcome,
    UnintelligibleReply,
    aggregate_status,
    error_text,
    error_tuple,
    parse_cancel_reply,
    parse_json_reply,
    processed_tuple,
)
from ukcancel.products import SHORT_TO_LONG

SHORTS = list(SHORT_TO_LONG)


# ---- parse_json_reply ------------------------------------------------------------------------


def test_json_labelled_as_html_with_leading_blank_lines_is_parsed() -> None:
    body = b'\n\n{"OK": 1, "JobID": 1001, "APIVersion": "1.12"}'
    assert parse_json_reply(body) == {"OK": 1, "JobID": 1001, "APIVersion": "1.12"}


def test_str_bodies_and_trailing_whitespace_are_accepted() -> None:
    assert parse_json_reply('\r\n  {"OK": 0, "ERROR": "no"}\n\n') == {"OK": 0, "ERROR": "no"}


@pytest.mark.parametrize("ok", [0, 1, 2])
def test_every_documented_ok_value_is_accepted(ok: int) -> None:
    assert parse_json_reply(json.dumps({"OK": ok}))["OK"] == ok


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<!DOCTYPE html><html><body>Scheduled maintenance</body></html>", "not JSON"),
        (b'\n\n{"OK": 1, "JobID": 10', "not JSON"),  # truncated on the way back
        (b"", "not JSON"),
        (b"\n\n\xff\xfe<b>Warning</b>: \x00\x9c{OK: \xc3\x28", "not UTF-8"),
        (b"[1, 2]", "not an object"),
        (b'"OK"', "not an object"),
        (b'{"APIVersion": "1.12", "JobID": 1001}', "no OK key"),
        (b'{"OK": 3}', "outside 0, 1, 2"),
        (b'{"OK": -1}', "outside 0, 1, 2"),
        (b'{"OK": true}', "outside 0, 1, 2"),
        (b'{"OK": "1"}', "outside 0, 1, 2"),
        (b'{"OK": null}', "outside 0, 1, 2"),
        (b'{"OK": 1.0}', "outside 0, 1, 2"),
    ],
)
def test_replies_that_are_not_the_promised_json_object_are_unintelligible(body: bytes, reason: str) -> None:
    with pytest.raises(UnintelligibleReply, match=reason):
        parse_json_reply(body)


def test_pathologically_nested_json_is_unintelligible_not_a_crash() -> None:
    with pytest.raises(UnintelligibleReply):
        parse_json_reply(b"[" * 100_000 + b"]" * 100_000)


def test_a_number_too_long_to_convert_is_unintelligible_not_a_crash() -> None:
    with pytest.raises(UnintelligibleReply):
        parse_json_reply(b'{"OK": 1, "JobID": ' + b"7" * 5000 + b"}")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_never_raise_anything_but_unintelligible_reply(body: bytes) -> None:
    try:
        payload = parse_json_reply(body)
    except UnintelligibleReply:
        return
    assert isinstance(payload, dict)
    assert type(payload["OK"]) is int and payload["OK"] in (0, 1, 2)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    ok=st.sampled_from([0, 1, 2, 3, -1, True, False, 1.0, "1", None]),
    codes=st.one_of(JSON, st.dictionaries(st.sampled_from(SHORTS), JSON | st.integers(-3, 6), max_size=7)),
    texts=st.one_of(JSON, st.dictionaries(st.sampled_from(SHORTS), JSON, max_size=7)),
    extra=st.dictionaries(st.text(max_size=8), JSON, max_size=3),
    asked=st.lists(st.sampled_from(SHORTS), min_size=1, max_size=7, unique=True),
)
def test_any_json_object_parses_to_a_valid_reply_or_raises_unintelligible_reply(
    ok: Any, codes: Any, texts: Any, extra: dict[str, Any], asked: list[str]
) -> None:
    body = json.dumps({**extra, "OK": ok, "statusCodes": codes, "status": texts})
    try:
        reply = parse_cancel_reply(parse_json_reply(body), asked)
    except UnintelligibleReply:
        return
    assert type(reply.ok) is int and reply.ok in (0, 1, 2)
    if reply.ok == 0:
        assert reply.outcomes == {} and reply.error
    else:
        assert list(reply.outcomes) == asked
        for outcome in reply.outcomes.values():
            assert type(outcome.code) is int and outcome.code in PRODUCT_CODES
            assert isinstance(outcome.text, str)


@settings(max_examples=200, deadline=None)
@example("\u00b2", ["lc"])
@example("--1", ["lc"])
@example(" 1_0 ", ["lc"])
@example("0" * 5000, ["lc"])
@given(st.text(max_size=12), st.lists(st.sampled_from(SHORTS), min_size=1, max_size=3, unique=True))
def test_odd_quoted_codes_never_crash_the_parser(code: str, asked: list[str]) -> None:
    payload = {"OK": 2, "statusCodes": {s: code for s in asked}, "status": {s: "x" for s in asked}}
    try:
        reply = parse_cancel_reply(payload, asked)
    except UnintelligibleReply:
        return
    assert all(o.code in PRODUCT_CODES for o in reply.outcomes.values())


# ---- parse_cancel_reply ------------------------------------------------------------------------


def test_cancel_reply_of_a_processed_request_reads_every_asked_product() -> None:
    payload = {
        "OK": 2,
        "JobID": 1001,
        "status": {"lc": "Job could not be cancelled - has it already finished?", "psf": "Job cancelled OK"},
        "statusCodes": {"lc": 1, "psf": 0},
    }
    reply = parse_cancel_reply(payload, ["lc", "psf"])
    assert reply == CancelReply(
        ok=2,
        error=None,
        outcomes={
            "lc": ProductOutcome(1, "Job could not be cancelled - has it already finished?"),
            "psf": ProductOutcome(0, "Job cancelled OK"),
        },
    )


def test_cancel_reply_ok_0_carries_the_error_text_and_no_outcomes() -> None:
    reply = parse_cancel_reply({"OK": 0, "ERROR": "Job 147 is not owned by user frodo@mount.doom"}, ["lc"])
    assert reply == CancelReply(ok=0, error="Job 147 is not owned by user frodo@mount.doom", outcomes={})


def test_quoted_codes_are_read_as_numbers_and_missing_texts_become_empty() -> None:
    reply = parse_cancel_reply({"OK": 1, "statusCodes": {"lc": "0"}, "status": {}}, ["lc"])
    assert reply.outcomes == {"lc": ProductOutcome(0, "")}


def test_products_not_asked_for_are_ignored() -> None:
    payload = {"OK": 1, "statusCodes": {"lc": 0, "spec": 3}, "status": {"lc": "ok", "spec": "?"}}
    assert list(parse_cancel_reply(payload, ["lc"]).outcomes) == ["lc"]


@pytest.mark.parametrize(
    "payload",
    [
        {"OK": 1},
        {"OK": 1, "statusCodes": [], "status": {}},
        {"OK": 1, "statusCodes": {"lc": 0}, "status": "Job cancelled OK"},
        {"OK": 1, "statusCodes": {"psf": 0}, "status": {"psf": "ok"}},  # lc asked, not answered
        {"OK": 2, "statusCodes": {"lc": 5}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": -1}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": "-1"}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": "--1"}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": "\u00b2"}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": True}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": 1.0}, "status": {"lc": "?"}},
        {"OK": 2, "statusCodes": {"lc": None}, "status": {"lc": "?"}},
    ],
)
def test_malformed_cancel_replies_are_unintelligible(payload: dict[str, Any]) -> None:
    with pytest.raises(UnintelligibleReply):
        parse_cancel_reply(payload, ["lc"])


# ---- error_text ----------------------------------------------------------------------------------


def test_error_text_is_the_error_alone_without_list_err() -> None:
    assert error_text({"OK": 0, "ERROR": "Job 1004 is not owned by user astro@example.org"}) == (
        "Job 1004 is not owned by user astro@example.org"
    )


def test_error_text_appends_list_err_labels_and_bulleted_items() -> None:
    payload = {
        "OK": 0,
        "ERROR": "Unknown products were requested",
        "listErr": [
            {"label": "Unknown products", "list": ["lcc", "spex"]},
            "not a dict, skipped",
            {"label": "Other", "list": "not a list"},
            {"list": ["orphan"]},
        ],
    }
    assert error_text(payload) == "\n".join(
        ["Unknown products were requested", "Unknown products", "* lcc", "* spex", "Other", "* orphan"]
    )


@pytest.mark.parametrize("payload", [{"OK": 0}, {"OK": 0, "ERROR": ""}, {"OK": 0, "ERROR": None, "listErr": "x"}])
def test_error_text_without_a_message_still_says_something(payload: dict[str, Any]) -> None:
    assert error_text(payload) == "The server reported an error without a message"


# ---- aggregate_status / processed_tuple ------------------------------------------------------------


def test_the_guides_first_tuple() -> None:
    assert processed_tuple({"lc": ProductOutcome(0, "Job cancelled OK")}) == [
        1,
        {"LightCurve": {"code": 0, "text": "Job cancelled OK"}},
    ]


def test_the_guides_second_tuple_is_partial() -> None:
    outcomes = {
        "lc": ProductOutcome(1, "Job could not be cancelled - has it already finished?"),
        "psf": ProductOutcome(0, "Job cancelled OK"),
    }
    assert processed_tuple(outcomes) == [
        2,
        {
            "LightCurve": {"code": 1, "text": "Job could not be cancelled - has it already finished?"},
            "StandardPos": {"code": 0, "text": "Job cancelled OK"},
        },
    ]


@pytest.mark.parametrize("code", [1, 2, 3, 4])
def test_any_product_not_cancelled_makes_the_status_2(code: int) -> None:
    outcomes = {"lc": ProductOutcome(0, "ok"), "spec": ProductOutcome(code, "no")}
    assert aggregate_status(outcomes) == 2


def test_nothing_to_report_is_not_a_success() -> None:
    assert aggregate_status({}) == 2


@given(st.dictionaries(st.sampled_from(SHORTS), st.sampled_from(sorted(PRODUCT_CODES)), min_size=1))
def test_status_is_1_exactly_when_every_code_is_0(codes: dict[str, int]) -> None:
    outcomes = {short: ProductOutcome(code, f"text {code}") for short, code in codes.items()}
    status, detail = processed_tuple(outcomes)
    assert status == (1 if all(code == CancelCode.CANCELLED for code in codes.values()) else 2)
    assert aggregate_status(outcomes) == status
    # Keyed by long name, in the order given, with the code and text of each product.
    assert list(detail) == [SHORT_TO_LONG[short] for short in codes]
    assert detail == {SHORT_TO_LONG[s]: {"code": c, "text": f"text {c}"} for s, c in codes.items()}
    assert json.loads(json.dumps([status, detail])) == [status, detail]


def test_error_tuple_shape() -> None:
    assert error_tuple(-1, "HTTP 503") == [-1, {"ERROR": "HTTP 503"}]
    assert error_tuple(0, "not owned") == [0, {"ERROR": "not owned"}]
