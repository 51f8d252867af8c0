"""What the OpenAPI document says beyond what flask-smorest infers: errors, unknown parameters, rules.

- `Blueprint`: flask-smorest's, with a webargs parser that leaves `unknown` to each schema. webargs
  passes `unknown=EXCLUDE` for query strings and headers by default, which overrode the query
  schemas' `unknown = RAISE`: `?status=aborted` was dropped silently instead of answered 422.
- `problems(blp, 401, 404, ...)`: documents the errors a route can give, each an RFC 9457 problem
  (`ProblemSchema` as `application/problem+json`, the components `ProblemApi` registers).
- `DocumentPlugin`: apispec's marshmallow plugin, adding a schema's `OPENAPI_RULES` (JSON Schema
  keywords such as `oneOf` for rules a `validates_schema` enforces) to its component.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Mapping
from typing import Any

import flask_smorest
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from webargs.flaskparser import FlaskParser

from ukcancel.service.http_schemas import ProblemSchema

MEDIA_TYPE = "application/problem+json"


class Blueprint(flask_smorest.Blueprint):
    # unknown=None: each schema's Meta.unknown decides (RAISE for queries and bodies, EXCLUDE for headers).
    ARGUMENTS_PARSER = FlaskParser(unknown=None)


def problems(
    blp: flask_smorest.Blueprint, *statuses: int, described: Mapping[int, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Document error answers of a view: `problems(blp, 401, 404, described={409: "why it is 409 here"})`."""
    described = dict(described or {})

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        for status in sorted({*statuses, *described}, reverse=True):
            if status in described:
                view = blp.alt_response(
                    status, schema=ProblemSchema, content_type=MEDIA_TYPE, description=described[status]
                )(view)
            else:
                view = blp.alt_response(status, response=http.HTTPStatus(status).name)(view)
        return view

    return decorator


class DocumentPlugin(MarshmallowPlugin):
    """The marshmallow plugin, adding a schema class's `OPENAPI_RULES` and a field's `JSON_SCHEMA`.

    A field's `JSON_SCHEMA` holds keywords apispec does not pass through from metadata (such as
    `prefixItems`); a nullable field's "type" becomes [type, "null"].
    """

    def init_spec(self, spec: Any) -> None:
        super().init_spec(spec)
        self.converter.add_attribute_function(field_json_schema)

    def schema_helper(self, name: str, _: Any, schema: Any = None, **kwargs: Any) -> dict[str, Any] | None:
        json_schema = super().schema_helper(name, _, schema=schema, **kwargs)
        rules: Mapping[str, Any] | None = getattr(resolve_schema_cls(schema), "OPENAPI_RULES", None)
        if json_schema is not None and rules:
            json_schema.update(rules)
        return json_schema


def field_json_schema(self: Any, field: Any, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    json_schema = dict(getattr(field, "JSON_SCHEMA", None) or {})
    if json_schema and field.allow_none and isinstance(json_schema.get("type"), str):
        json_schema["type"] = [json_schema["type"], "null"]
    return json_schema
