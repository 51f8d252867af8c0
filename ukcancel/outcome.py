"""What a cancellation came to: UKSSDC replies parsed, product outcomes, and the status tuple.

The tuple is the one `XRTProductRequest.cancelProducts()` documents, `(status, detail)`:

====== ================================================= ======================================
status meaning                                           detail
====== ================================================= ======================================
-1     transport failure or an unintelligible reply      ``{"ERROR": text}``
0      the server cancelled nothing (``OK: 0``)          ``{"ERROR": text}``
1      every requested product cancelled                 ``{LongName: {"code": 0, "text": ..}}``
2      processed, at least one product not cancelled     ``{LongName: {"code": n, "text": ..}}``
====== ================================================= ======================================

Unlike the official client, status 2 is reported whenever a product code is not 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ukcancel.codes import CancelCode
from ukcancel.products import SHORT_TO_LONG

PRODUCT_CODES = frozenset(CancelCode)

CONFIRMED_CANCELLED_TEXT = "Job cancelled OK (confirmed by a status check)"
CONFIRMED_FINISHED_TEXT = "Job could not be cancelled - it has already finished (confirmed by a status check)"


class UnintelligibleReply(ValueError):
    """A 200 reply that is not the JSON object the protocol promises: a transport failure."""


@dataclass(frozen=True)
class ProductOutcome:
    """One product's line in the tuple: the canceljob.php code and its text."""

    code: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text}


@dataclass(frozen=True)
class CancelReply:
    """A canceljob.php reply that was understood."""

    ok: int
    error: str | None
    outcomes: dict[str, ProductOutcome]  # keyed by short name


def parse_json_reply(body: bytes | str) -> dict[str, Any]:
    """The JSON object of a 200 reply, whatever its Content-Type; blank lines before it are allowed."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnintelligibleReply(f"reply is not UTF-8: {exc}") from None
    try:
        payload = json.loads(body.strip())
    except json.JSONDecodeError as exc:
        snippet = body.strip()[:80].replace("\n", " ")
        raise UnintelligibleReply(f"reply is not JSON ({exc.msg}): {snippet!r}") from None
    except (ValueError, RecursionError) as exc:  # a number too long to convert; nesting too deep
        raise UnintelligibleReply(f"reply is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise UnintelligibleReply("reply is JSON but not an object")
    if "OK" not in payload:
        raise UnintelligibleReply("reply has no OK key")
    if type(payload["OK"]) is not int or payload["OK"] not in (0, 1, 2):
        raise UnintelligibleReply(f"reply has an OK value outside 0, 1, 2: {payload['OK']!r}")
    return payload


def error_text(payload: Mapping[str, Any]) -> str:
    """The ERROR text of an `OK: 0` reply with its `listErr` lines appended, as the official client does."""
    lines = [str(payload.get("ERROR") or "The server reported an error without a message")]
    list_err = payload.get("listErr")
    if isinstance(list_err, list):
        for entry in list_err:
            if not isinstance(entry, dict):
                continue
            lines.append(str(entry.get("label", "")))
            items = entry.get("list")
            if isinstance(items, list):
                lines.extend(f"* {item}" for item in items)
    return "\n".join(line for line in lines if line)


def parse_cancel_reply(payload: Mapping[str, Any], asked: list[str]) -> CancelReply:
    """Read a canceljob.php reply for the short names `asked`; raise `UnintelligibleReply` if malformed."""
    ok = payload["OK"]
    if ok == 0:
        return CancelReply(ok=0, error=error_text(payload), outcomes={})
    codes, texts = payload.get("statusCodes"), payload.get("status")
    if not isinstance(codes, dict) or not isinstance(texts, dict):
        raise UnintelligibleReply("reply lacks statusCodes/status objects")
    outcomes: dict[str, ProductOutcome] = {}
    for short in asked:
        code = codes.get(short)
        if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 9:
            code = int(code)  # PHP servers are known to quote numbers.
        if not isinstance(code, int) or isinstance(code, bool) or code not in PRODUCT_CODES:
            raise UnintelligibleReply(f"reply has no valid status code for {short!r}: {code!r}")
        text = texts.get(short)
        outcomes[short] = ProductOutcome(code=code, text=str(text) if text is not None else "")
    return CancelReply(ok=ok, error=None, outcomes=outcomes)


def aggregate_status(outcomes: Mapping[str, ProductOutcome]) -> int:
    """1 when every product was cancelled, 2 when the server processed it and one was not."""
    return 1 if outcomes and all(o.code == CancelCode.CANCELLED for o in outcomes.values()) else 2


def processed_tuple(outcomes: Mapping[str, ProductOutcome]) -> list[Any]:
    """The tuple (as a JSON array) for a processed request; `outcomes` keyed by short name."""
    detail = {SHORT_TO_LONG[short]: outcomes[short].as_dict() for short in outcomes}
    return [aggregate_status(outcomes), detail]


def error_tuple(status: int, message: str) -> list[Any]:
    """The tuple for status -1 (transport) or 0 (server cancelled nothing)."""
    return [status, {"ERROR": message}]


WITHDRAWN_ERROR = "The command was withdrawn before it reached the UKSSDC."


def withdrawn_tuple(last_error: str | None) -> list[Any]:
    """The tuple of a command withdrawn before any call: -1, as for a request that never went out."""
    return error_tuple(-1, last_error or WITHDRAWN_ERROR)


def result_status(stored: bytes | str | None) -> str | None:
    """The status ("-1", "0", "1", "2") of a result tuple as stored (JSON); None if absent or unreadable."""
    if not stored:
        return None
    try:
        return str(json.loads(stored)[0])
    except (ValueError, IndexError, TypeError, KeyError):
        return None
