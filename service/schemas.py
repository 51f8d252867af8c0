"""Marshmallow schemas: the single source of validation, serialisation and the OpenAPI document."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ukcancel import products as product_names
from ukcancel.command import STATES

MAX_JOB_ID = 2**31 - 1


class JobId(fields.Integer):
    """A UKSSDC JobID: a JSON integer > 0. Booleans, floats and strings are refused, not coerced."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, validate=validate.Range(min=1, max=MAX_JOB_ID), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class ProductSelection(fields.Field):
    """`"all"` or a non-empty list of long or short product names; loads to long names or "all"."""

    default_error_messages = {
        "invalid": 'Must be "all" or a non-empty list of product names.',
        "empty": "Must name at least one product.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str] | str:
        if value == product_names.ALL:
            return product_names.ALL
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.make_error("invalid")
        if not value:
            raise self.make_error("empty")
        try:
            return product_names.normalise(value)
        except product_names.UnknownProduct as exc:
            raise ValidationError(str(exc)) from None

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class EpochTime(fields.DateTime):
    """Epoch seconds in the record, ISO 8601 UTC on the wire."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return super()._serialize(datetime.fromtimestamp(float(value), tz=timezone.utc), attr, obj, **kwargs)


class CancellationRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    job_id = JobId(required=True, metadata={"description": "The UKSSDC JobID of the submitted product job."})
    user_id = fields.Email(
        load_default=None,
        metadata={"description": "The registered e-mail that submitted the job; defaults to the token's user."},
    )
    products = ProductSelection(
        load_default=product_names.ALL,
        metadata={
            "description": '"all", or a list of product names (long or short: LightCurve/lc, Spectrum/spec, '
            "StandardPos/psf, EnhancedPos/enh, AstromPos/xastrom, Image/image, SourceDet/sourceDet).",
            "oneOf": [{"type": "string", "enum": ["all"]}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
        },
    )


class HistoryEntrySchema(Schema):
    state = fields.String(validate=validate.OneOf(STATES))
    at = EpochTime()


class CancellationSchema(Schema):
    id = fields.String()
    job_id = fields.Integer()
    user_id = fields.String()
    products = ProductSelection()
    state = fields.String(validate=validate.OneOf(STATES))
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = EpochTime()
    updated_at = EpochTime()
    result = fields.Raw(
        allow_none=True,
        metadata={"description": "null until completed, then the cancelProducts() tuple as [status, detail]."},
    )
    submitted_by = fields.String(allow_none=True)
    history = fields.List(fields.Nested(HistoryEntrySchema))
    batch_id = fields.String(allow_none=True)


class AcceptedSchema(Schema):
    id = fields.String()
    state = fields.String()


class WaitQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    wait = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=60),
        metadata={"description": "Seconds to wait for a terminal state (long poll), at most 60."},
    )
