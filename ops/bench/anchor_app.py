"""The anchor of benchmark 6: what a team would write in an afternoon instead of this service.

Flask, a marshmallow load of the same body, one HSET of a record, one Celery `send_task` to the
same Redis broker. No authentication, rate limit, fairness, idempotency or problem bodies. It
lives in the benchmark, not the product: `gunicorn ... anchor_app:app` with the same server
settings as the service, so the comparison is of what each does per request.
"""

from __future__ import annotations

import os
import uuid

import redis
from celery import Celery
from flask import Flask, jsonify, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate

REDIS_URL = os.environ["REDIS_URL"]
connection = redis.Redis.from_url(REDIS_URL)
celery = Celery("anchor", broker=REDIS_URL, set_as_current=False)
app = Flask("anchor")


class CancelSchema(Schema):
    class Meta:
        unknown = RAISE

    job_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    products = fields.List(fields.String(), load_default=["all"])


schema = CancelSchema()


@app.get("/healthz")
def health():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@app.post("/v1/cancellations")
def cancel():  # type: ignore[no-untyped-def]
    try:
        body = schema.load(request.get_json(force=True))
    except ValidationError as exc:
        return jsonify(errors=exc.messages), 422
    command_id = uuid.uuid4().hex
    connection.hset(f"anchor:cmd:{command_id}", mapping={"job_id": body["job_id"], "state": "queued",
                                                          "products": ",".join(body["products"])})
    celery.send_task("anchor.run", args=[command_id], queue="anchor")
    return jsonify(id=command_id, state="queued"), 202
