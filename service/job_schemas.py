"""Marshmallow schemas of `/v1/jobs` and `/v1/plans`: the selection (one filter for both), the views.

`JobFilterSchema` is the single definition of a selection of jobs and products: the query string
of `GET /v1/jobs` and the body of `POST /v1/plans` load through it, and the console's forms too.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ukcancel.jobs import STATE_FILTERS
from ukcancel.plans import PLAN_STATES
from ukcancel.schemas import MAX_JOB_ID, EpochTime, long_product_names
from ukcancel.service.http_schemas import wait_field

MAX_SELECTED_IDS = 1000


class ProductNames(fields.Field):
    """Long or short product names, as a list or a comma-separated string; loads to long names."""

    default_error_messages = {"invalid": "Must be a list (or comma-separated string) of product names."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise self.make_error("invalid")
        return long_product_names(value)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class JobIds(fields.Field):
    """JobIDs, as a list of integers or a comma-separated string of them."""

    default_error_messages = {
        "invalid": "Must be a list (or comma-separated string) of JobIDs.",
        "range": f"Each JobID must be an integer from 1 to {MAX_JOB_ID}.",
        "too_many": f"At most {MAX_SELECTED_IDS} JobIDs.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[int]:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            if not parts or not all(part.isascii() and part.isdigit() for part in parts):
                raise self.make_error("invalid")
            if any(len(part.lstrip("0")) > len(str(MAX_JOB_ID)) for part in parts):
                raise self.make_error("range")  # not converted: a 4,301-digit number is not a JobID
            value = [int(part) for part in parts]
        if not isinstance(value, list) or not value or not all(type(v) is int for v in value):
            raise self.make_error("invalid")
        if any(not 1 <= v <= MAX_JOB_ID for v in value):
            raise self.make_error("range")
        if len(value) > MAX_SELECTED_IDS:
            raise self.make_error("too_many")
        return list(dict.fromkeys(value))

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class JobFilterSchema(Schema):
    """Which jobs and products; every criterion given must hold."""

    class Meta:
        unknown = RAISE

    name = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "A glob on the job's name, case-insensitive (fnmatch: * ? [..]), e.g. 'GRB 26*'."},
    )
    submitted_after = fields.AwareDateTime(
        default_timezone=timezone.utc,
        metadata={"description": "Jobs submitted at or after this ISO 8601 time (UTC unless an offset is given; "
                  "the UKSSDC's DateSubmitted is read as UTC)."},
    )
    submitted_before = fields.AwareDateTime(
        default_timezone=timezone.utc,
        metadata={"description": "Jobs submitted before this ISO 8601 time; not earlier than submitted_after (422). "
                  "Equal to it: an empty range, no job."}
    )
    products = ProductNames(
        allow_none=True,
        metadata={"description": "Only these products (long or short names; a list, or comma-separated in a "
                  "query string); a job asking for none of them is left out. null: no product filter. An "
                  "unknown name is refused (422)."}
    )
    state = fields.String(
        validate=validate.OneOf(tuple(STATE_FILTERS)),
        metadata={"description": "Only products in this state: active (1 requested, 2 queued, 3 running, 5 waiting "
                  "for the position), finished (4 completed, -1..-3 failed or empty) or cancelled (-4)."},
    )
    job_ids = JobIds(allow_none=True, metadata={
        "description": f"Only these JobIDs (a list, or comma-separated in a query string), at most {MAX_SELECTED_IDS}, "
                       f"each 1 to {MAX_JOB_ID}. null: no JobID filter."})
    user_id = fields.Email(
        load_default=None,
        metadata={"description": "Admin tokens: whose jobs (default: the token's user). Other tokens may name "
                  "only their own user."},
    )

    @validates_schema
    def dates_in_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        after, before = data.get("submitted_after"), data.get("submitted_before")
        if after is not None and before is not None and after > before:
            raise ValidationError("Must not be earlier than submitted_after.", "submitted_before")


class JobsQuerySchema(JobFilterSchema):
    wait = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=60),
        metadata={"description": "Seconds to wait (at most 60) for a refresh under way to end (long poll)."},
    )


class ProductStateSchema(Schema):
    name = fields.String(metadata={"description": "Long product name."})
    state = fields.Integer(allow_none=True, metadata={"description": "checkProductStatus.php code, -4..5; null if unread."})
    state_text = fields.String(allow_none=True)


class JobSchema(Schema):
    job_id = fields.Integer()
    name = fields.String()
    submitted = fields.String(allow_none=True, metadata={"description": "DateSubmitted as the UKSSDC wrote it."})
    products = fields.List(fields.Nested(ProductStateSchema))
    read_at = EpochTime(allow_none=True, metadata={"description": "When these states were read from the UKSSDC."})
    age_seconds = fields.Float(allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "The UKSSDC refused this job's status."})


class JobsSchema(Schema):
    user_id = fields.String()
    listed_at = EpochTime(allow_none=True, metadata={"description": "When the job list was last read."})
    age_seconds = fields.Float(
        allow_none=True, metadata={"description": "Age of the oldest information shown (list or states)."}
    )
    refreshing = fields.Boolean(metadata={"description": "A worker is reading newer states now."})
    fresh = fields.Boolean(metadata={"description": "Everything shown is within the status TTL."})
    error = fields.String(allow_none=True, metadata={"description": "The UKSSDC would not list the jobs."})
    total = fields.Integer(metadata={"description": "Jobs listed, before the filters."})
    jobs = fields.List(fields.Nested(JobSchema))


class PlanRequestSchema(JobFilterSchema):
    """A selection to plan; products are further limited to those active now."""


class PlanAcceptedSchema(Schema):
    id = fields.String()
    state = fields.String(validate=validate.OneOf(PLAN_STATES))


class PlanQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    wait = wait_field("Seconds to wait (at most 60) for the plan to be computed (long poll).")


class PlanListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    user_id = fields.Email(metadata={"description": "Admin tokens only: that user's plans (default: your own)."})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200),
                           metadata={"description": "At most this many plans, newest first (1-200, default 50)."})


class PlanSummarySchema(Schema):
    id = fields.String()
    user_id = fields.String()
    state = fields.String(validate=validate.OneOf(PLAN_STATES))
    created_at = EpochTime()
    expires_at = EpochTime(allow_none=True)
    batch_id = fields.String(allow_none=True)


class PlanListSchema(Schema):
    items = fields.List(fields.Nested(PlanSummarySchema))


class PairSchema(Schema):
    job_id = fields.Integer()
    name = fields.String()
    products = fields.List(fields.String())


class LeftOutSchema(Schema):
    job_id = fields.Integer()
    name = fields.String()
    reason = fields.String()


class PlanSchema(Schema):
    id = fields.String()
    user_id = fields.String()
    submitted_by = fields.String(allow_none=True)
    state = fields.String(validate=validate.OneOf(PLAN_STATES),
                          metadata={"description": "computing (job states being read), ready or failed (see error)."})
    selection = fields.Dict()
    created_at = EpochTime()
    computed_at = EpochTime(allow_none=True)
    expires_at = EpochTime(allow_none=True, metadata={"description": "Apply before this time."})
    expired = fields.Boolean()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                         metadata={"description": "jobs and products to cancel, jobs left out."})
    pairs = fields.List(fields.Nested(PairSchema), metadata={"description": "Exactly what applying cancels."})
    left_out = fields.List(fields.Nested(LeftOutSchema))
    error = fields.String(allow_none=True)
    batch_id = fields.String(allow_none=True, metadata={"description": "The batch made by applying the plan."})


class PlanAppliedSchema(Schema):
    id = fields.String(metadata={"description": "The batch's id."})
    plan_id = fields.String()
    state = fields.String()
    total = fields.Integer()
