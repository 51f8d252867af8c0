"""The HTTP layer's own marshmallow schemas: query strings, headers, pages and problems.

The request and command schemas the stream and callbacks share are in `ukcancel.schemas`.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from ukcancel.command import STATES
from ukcancel.listing import InvalidCursor, Position
from ukcancel.schemas import MAX_JOB_ID, CancellationSchema


class IdempotencyHeaderSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # every other request header

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        load_default=None,
        validate=validate.Regexp(
            r"^[A-Za-z0-9_.:+/=-]{1,128}$", error="Must be 1-128 characters: letters, digits or _.:+/=-"
        ),
        metadata={
            "description": "Makes a retried POST safe: the same key with the same body (same token, within "
            "the result retention) answers 200 with the original command instead of creating another; the "
            "same key with a different body is refused (422). A UUID per logical request is a good key."
        },
    )


class ListCursor(fields.String):
    """The opaque `next_cursor` of a previous page; loads to a `Position`."""

    default_error_messages = {"cursor": "Not a cursor this service issued."}
    JSON_SCHEMA = {"type": "string", "minLength": 1}  # an empty cursor is no cursor this service issued

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Position:
        try:
            return Position.decode(super()._deserialize(value, attr, data, **kwargs))
        except InvalidCursor:
            raise self.make_error("cursor") from None


class CancellationListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    state = fields.String(validate=validate.OneOf(STATES), metadata={"description": "Only commands in this state."})
    job_id = fields.Integer(
        validate=validate.Range(min=1, max=MAX_JOB_ID), metadata={"description": "Only commands for this JobID."}
    )
    created_after = fields.AwareDateTime(
        default_timezone=timezone.utc,
        metadata={"description": "ISO 8601 time (UTC when no offset is given; URL-encode a '+' offset)."},
    )
    user_id = fields.Email(
        metadata={"description": "Admin tokens: whose commands to list (default: every user's). Other tokens may "
                  "name only their own user."}
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = ListCursor(metadata={"description": "next_cursor of the previous page."})


class CancellationPageSchema(Schema):
    items = fields.List(fields.Nested(CancellationSchema))
    next_cursor = fields.String(
        allow_none=True, metadata={"description": "Pass as `cursor` for the next page; null at the end."}
    )


class AcceptedSchema(Schema):
    id = fields.String()
    state = fields.String()


def wait_field(description: str) -> fields.Integer:
    """`?wait=N`: seconds a long poll may wait, 0 to 60."""
    return fields.Integer(load_default=0, validate=validate.Range(min=0, max=60), metadata={"description": description})


class WaitQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    wait = wait_field("Seconds to wait for a terminal state (of a batch: of every item; long poll), at most 60.")


class FieldErrorSchema(Schema):
    pointer = fields.String(
        required=True,
        metadata={"description": "JSON pointer to the offending field (in the body unless `in` says otherwise)."},
    )
    detail = fields.String(required=True)
    in_ = fields.String(
        data_key="in",
        validate=validate.OneOf(("query", "headers", "view_args", "form")),
        metadata={"description": "Where the field is when not in the JSON body: query, headers, ..."},
    )


class ProblemSchema(Schema):
    """RFC 9457 problem details: the body of every error answer, as `application/problem+json`."""

    type = fields.String(required=True, metadata={"description": "Always about:blank: the status says it all."})
    title = fields.String(required=True, metadata={"description": "The HTTP status phrase."})
    status = fields.Integer(required=True, validate=validate.Range(min=400, max=599))
    detail = fields.String(metadata={"description": "What went wrong with this request, for a human."})
    instance = fields.String(allow_none=True, metadata={"description": "The request path."})
    errors = fields.List(
        fields.Nested(FieldErrorSchema),
        metadata={"description": "Invalid requests (400, 422): one entry per offending field."},
    )
    limit = fields.String(metadata={"description": "A 429 over a per-user quota: which one (queued_commands, "
                                                   "batches_per_hour, plans_per_hour, long_polls)."})
    setting = fields.String(metadata={"description": "A 429 over a quota: the setting that sets it."})
    allowed = fields.Integer(metadata={"description": "A 429 over a quota: the limit."})
    current = fields.Integer(metadata={"description": "A 429 over a quota: the user's count now."})
