"""Marshmallow schemas: the single source of validation, serialisation and the OpenAPI document."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, TypedDict
from urllib.parse import urlsplit

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate
from marshmallow.experimental.context import Context

from ukcancel import callback
from ukcancel import products as product_names
from ukcancel.command import STATES
from ukcancel.listing import InvalidCursor, Position
from ukcancel.settings import Settings

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


class SubmissionPolicy(TypedDict):
    callback_allowed_hosts: tuple[str, ...]


# What a request is checked against besides its own content; without it no callback host is allowed.
SubmissionContext = Context[SubmissionPolicy]


def submission_policy(settings: Settings) -> SubmissionContext:
    """`with submission_policy(settings): schema.load(...)` checks requests against `settings`."""
    return SubmissionContext({"callback_allowed_hosts": settings.callback_allowed_hosts})


class CallbackUrl(fields.Url):
    """An http(s) URL on a host in UKCANCEL_CALLBACK_ALLOWED_HOSTS (read from the `SubmissionContext`)."""

    default_error_messages = {
        "host": "Callbacks to host {host!r} are not allowed by this facility.",
        # They would be stored, shown by GET and sent as Basic auth: the signature authenticates instead.
        "credentials": "Must not contain a user name or password.",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=2048), **kwargs)

    def _validate(self, value: Any) -> None:
        super()._validate(value)  # a well-formed http(s) URL first, then its parts
        if urlsplit(value).username is not None:
            raise self.make_error("credentials")
        policy = SubmissionContext.get({"callback_allowed_hosts": ()})
        if not callback.host_allowed(value, policy["callback_allowed_hosts"]):
            raise self.make_error("host", host=urlsplit(value).netloc)


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
    callback_url = CallbackUrl(
        load_default=None,
        metadata={
            "description": "Optional http(s) URL the service POSTs the command to once it has ended, signed "
            "with the submitting token's callback secret (X-Ukcancel-Signature). Its host must be one the "
            "facility allows."
        },
    )


class CallbackOutcomeSchema(Schema):
    status = fields.String(
        validate=validate.OneOf(callback.OUTCOMES),
        metadata={"description": "pending (scheduled or retrying), delivered, refused (host not allowed or "
                  "no secret: nothing was sent) or failed (gave up)."},
    )
    attempts = fields.Integer()
    http_status = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    at = EpochTime()


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
    callback_url = fields.String(allow_none=True)
    callback = fields.Nested(
        CallbackOutcomeSchema,
        allow_none=True,
        metadata={"description": "null without a callback_url; else how its delivery went."},
    )


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


class WaitQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    wait = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=60),
        metadata={"description": "Seconds to wait for a terminal state (of a batch: of every item; long poll), at most 60."},
    )
