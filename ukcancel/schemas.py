"""The marshmallow schemas shared by every way in and out: HTTP, the command stream and callbacks.

A cancellation request is loaded by `CancellationRequestSchema` whether it came as an HTTP body
or a stream entry; a command is shown by `CancellationSchema` in `GET /v1/cancellations/{id}`
and in a callback's body alike. The HTTP layer's own schemas (query strings, headers, pages) are
in `ukcancel.service.http_schemas`. Each schema is the single source of validation, serialisation and
the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, TypedDict
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, validate
from marshmallow.experimental.context import Context

from ukcancel import callback
from ukcancel import products as product_names
from ukcancel.command import STATES
from ukcancel.settings import Settings

MAX_JOB_ID = 2**31 - 1


class JobId(fields.Integer):
    """A UKSSDC JobID: a JSON integer > 0. Booleans, fractions and strings are refused, not coerced.

    An integral number written with a fraction (``890.0``) is the integer 890, as JSON Schema's
    "integer" (which the OpenAPI document states) counts it; ``890.5`` is refused.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, validate=validate.Range(min=1, max=MAX_JOB_ID), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        return super()._deserialize(value, attr, data, **kwargs)


def long_product_names(names: list[str]) -> list[str]:
    """Long or short product names as long names, duplicates collapsed; a `ValidationError` naming an unknown one."""
    try:
        return product_names.normalise(names)
    except product_names.UnknownProduct as exc:
        raise ValidationError(str(exc)) from None


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
        return long_product_names(value)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class EpochTime(fields.DateTime):
    """Epoch seconds in the record, ISO 8601 UTC on the wire."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return super()._serialize(datetime.fromtimestamp(float(value), tz=timezone.utc), attr, obj, **kwargs)


class ResultTuple(fields.Raw):
    """A cancelProducts() tuple as JSON: [status, detail], status -1, 0, 1 or 2 and detail an object."""

    # Its JSON Schema (2020-12, as OpenAPI 3.1 uses): the HTTP layer's document plugin adds it.
    JSON_SCHEMA = {
        "type": "array",
        "prefixItems": [
            {"type": "integer", "enum": [-1, 0, 1, 2], "description": "The tuple's status."},
            {"type": "object", "description": "Per product (1, 2), or {ERROR: text} (-1, 0)."},
        ],
        "minItems": 2,
        "maxItems": 2,
    }


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

    # In the document: an absolute http(s) URI (apispec alone would say format "url", no JSON Schema format).
    JSON_SCHEMA = {"type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://", "maxLength": 2048}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=2048), **kwargs)

    def _validate(self, value: Any) -> None:
        super()._validate(value)  # a well-formed http(s) URL first, then its parts
        if urlsplit(value).username is not None:
            raise self.make_error("credentials")
        policy = SubmissionContext.get({"callback_allowed_hosts": ()})
        allowed = policy["callback_allowed_hosts"]
        if not callback.host_allowed(value, allowed) or not default_port_or_listed(value, allowed):
            raise self.make_error("host", host=urlsplit(value).netloc)


def default_port_or_listed(url: str, allowed_hosts: tuple[str, ...]) -> bool:
    """A bare host on the allow list allows its scheme's default port only (80, 443); any other
    port must be listed as host:port. True when the URL keeps to that."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if port is None or port == default:
        return True
    return f"{(parts.hostname or '').lower()}:{port}" in {host.lower() for host in allowed_hosts}


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
            "oneOf": [
                {"type": "string", "enum": [product_names.ALL]},
                {
                    "type": "array",
                    "items": {"type": "string", "enum": [*product_names.LONG_TO_SHORT, *product_names.SHORT_TO_LONG]},
                    "minItems": 1,
                },
            ],
        },
    )
    callback_url = CallbackUrl(
        load_default=None,
        metadata={
            "description": "Optional http(s) URL the service POSTs the command to once it has ended, signed "
            "with the submitting token's callback secret (Standard Webhooks: webhook-id, webhook-timestamp, "
            "webhook-signature). Its host must be on the facility's UKCANCEL_CALLBACK_ALLOWED_HOSTS (422 "
            "otherwise): a bare host there allows its scheme's default port only (80, 443), any other port "
            "must be listed as host:port. No user name or password."
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
    next_attempt_at = EpochTime(
        allow_none=True,
        metadata={"description": "When the command is due to be tried again (retrying, or waiting for the "
                  "fleet); null otherwise."},
    )
    created_at = EpochTime()
    updated_at = EpochTime()
    result = ResultTuple(
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
