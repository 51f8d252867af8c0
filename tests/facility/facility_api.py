"""The API around a runtime, with two users' tokens and an admin's, for the facility tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ukcancel.assemble import create_api, create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.token import TokenRecord

ALICE = "astro@example.org"  # owns jobs 1001-1003 in the simulator's seeded table
BOB = "other@example.org"  # owns jobs 1004-1005
OPS = "ops@example.org"
PROBLEM = "application/problem+json"


@dataclass
class Facility:
    runtime: Runtime
    app: Flask
    client: FlaskClient
    tokens: dict[str, str] = field(default_factory=dict)  # token name -> the token itself
    records: dict[str, TokenRecord] = field(default_factory=dict)

    def auth(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    def call(self, method: str, path: str, who: str | None, body: Any = None,
             headers: dict[str, str] | None = None) -> TestResponse:
        kwargs: dict[str, Any] = {"headers": {**self.auth(who), **(headers or {})}}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"]["Content-Type"] = "application/json"
        return self.client.open(path, method=method, **kwargs)

    def submit(self, who: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> str:
        response = self.call("POST", "/v1/cancellations", who, body or {"job_id": 1001}, headers)
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.get_json()["id"]

    def command_ids(self) -> set[str]:
        return {key.decode().rsplit(":", 1)[1] for key in self.runtime.connection.keys("ukcancel:cmd:*")}


def build_facility(settings: Settings, connection: redis.Redis | None = None, *,
                   same_store_as: Facility | None = None) -> Facility:
    """A runtime and its API; with `same_store_as`, a second API process on that facility's store."""
    runtime = create_runtime(settings, connection)
    app = create_api(runtime=runtime)
    facility = Facility(runtime, app, app.test_client())
    if same_store_as is not None:
        facility.tokens, facility.records = same_store_as.tokens, same_store_as.records
        return facility
    for name, user_id, admin in (("alice", ALICE, False), ("bob", BOB, False), ("ops", OPS, True)):
        token, record = runtime.tokens.create(user_id, name=name, admin=admin)
        facility.tokens[name], facility.records[name] = token, record
    return facility
