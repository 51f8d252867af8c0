"""Marshmallow schemas of `/v1/batches`: the request, the query and the batch view.

An item is validated by `CancellationRequestSchema` itself (only its job_id and products), so a
batch item and a single cancellation accept exactly the same values; an error in item 3 is
reported at ``/items/3/<field>``.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ukcancel.batch import BATCH_STATES, RESULT_STATUSES
from ukcancel.command import STATES
from ukcancel.schemas import CancellationRequestSchema, EpochTime, ResultTuple
from ukcancel.service.http_schemas import WaitQuerySchema

MAX_ITEMS = 10_000
MAX_PAGE = 1000
ITEM_FIELDS = ("job_id", "products")


class BatchItemRequestSchema(CancellationRequestSchema):
    """A batch item: `CancellationRequestSchema` itself, used with only its job_id and products.

    A subclass only so the OpenAPI document names the reduced schema apart from the full one.
    """


class BatchRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    # `one_source` below, in the document: items (a list) or all_active true, never both nor neither.
    OPENAPI_RULES = {
        "oneOf": [
            {"required": ["items"], "properties": {"items": {"type": "array"}, "all_active": {"const": False}}},
            {"required": ["all_active"], "properties": {"all_active": {"const": True}, "items": {"type": "null"}}},
        ]
    }

    items = fields.List(
        fields.Nested(BatchItemRequestSchema, only=ITEM_FIELDS),
        validate=validate.Length(min=1, max=MAX_ITEMS),
        load_default=None,
        metadata={"description": f"1 to {MAX_ITEMS:,} cancellations, each {{job_id, products}} as for a single one."},
    )
    all_active = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Instead of items: cancel every product of the user's jobs that is still requested, "
            "queued, running or waiting (states 1, 2, 3, 5), as the UKSSDC reports them. The batch is "
            "`expanding` until a worker has found them."
        },
    )
    user_id = fields.Email(
        load_default=None,
        metadata={"description": "The registered e-mail the jobs belong to; defaults to the token's user."},
    )

    @validates_schema
    def one_source(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("all_active") and data.get("items") is not None:
            raise ValidationError('Give either "items" or "all_active": true, not both.')
        if not data.get("all_active") and data.get("items") is None:
            raise ValidationError('Give "items" (a list of cancellations) or "all_active": true.')


class BatchAcceptedSchema(Schema):
    id = fields.String()
    state = fields.String(validate=validate.OneOf(BATCH_STATES))
    total = fields.Integer(metadata={"description": "Items in the batch (0 while expanding)."})


class BatchQuerySchema(WaitQuerySchema):
    """The long poll of a single command (here: until every item is terminal), plus item paging."""

    cursor = fields.Integer(
        load_default=0,
        strict=False,
        validate=validate.Range(min=0),
        metadata={"description": "The next_cursor of the previous page (the index of the first item to show)."},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=MAX_PAGE),
        metadata={"description": f"Items per page, at most {MAX_PAGE}."},
    )


class BatchItemSchema(Schema):
    index = fields.Integer()
    command_id = fields.String()
    job_id = fields.Integer(allow_none=True)
    products = fields.Raw(allow_none=True, metadata={"description": '"all" or the long product names.'})
    state = fields.String(allow_none=True, validate=validate.OneOf(STATES))
    result = ResultTuple(
        allow_none=True,
        metadata={"description": "The cancelProducts() tuple once terminal; a withdrawn item is [-1, {ERROR}]."},
    )


class BatchSchema(Schema):
    id = fields.String()
    user_id = fields.String()
    submitted_by = fields.String(allow_none=True)
    created_at = EpochTime()
    state = fields.String(
        validate=validate.OneOf(BATCH_STATES),
        metadata={"description": "expanding (all_active, items being found), running, completed (every item "
                  "terminal) or failed (the active jobs could not be found; see error)."},
    )
    error = fields.String(allow_none=True)
    total = fields.Integer()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "Items by state."})
    results = fields.Dict(
        keys=fields.String(validate=validate.OneOf(RESULT_STATUSES)),
        values=fields.Integer(),
        metadata={"description": "Terminal items by tuple status: -1, 0, 1, 2 (withdrawn items count as -1)."},
    )
    done_fraction = fields.Float()
    eta_seconds = fields.Float(
        allow_none=True,
        metadata={"description": "Estimate from the fleet's current rate, the items not yet terminal and the "
                  "other users' waiting commands; null once done (or while expanding)."},
    )
    items = fields.List(fields.Nested(BatchItemSchema))
    next_cursor = fields.String(allow_none=True, metadata={"description": "Pass as ?cursor= for the next items."})
