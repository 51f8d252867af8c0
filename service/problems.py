"""RFC 9457 problem details: every error the API returns is `application/problem+json`.

flask-smorest funnels every HTTPException (including webargs' validation errors and Flask's
own 404/405/413) through `Api.handle_http_exception`; `ProblemApi` renders them as problems,
turning marshmallow's nested messages into a list of `{"pointer", "detail"}` entries that name
each offending field.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Any

from apispec.utils import build_reference
from flask import Response, json, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from ukcancel.service.http_schemas import ProblemSchema
from ukcancel.service.openapi import MEDIA_TYPE


def problem_response(status: int, title: str, detail: str | None = None, headers: Mapping[str, str] | None = None,
                     **extensions: Any) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.path if request else None
    body.update({k: v for k, v in extensions.items() if v is not None})
    response = Response(json.dumps(body), status=status, mimetype=MEDIA_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def field_errors(messages: Any, location: str | None = None, path: str = "") -> list[dict[str, str]]:
    """Flatten marshmallow messages into JSON-pointer entries: {"json": {"job_id": ["..."]}} -> /job_id."""
    out: list[dict[str, str]] = []
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if path == "" and location is None and key in ("json", "query", "headers", "view_args", "form"):
                out.extend(field_errors(value, str(key), ""))
                continue
            segment = "" if key == "_schema" else f"/{key}"
            out.extend(field_errors(value, location, path + segment))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        for message in messages:
            entry = {"pointer": path or "/", "detail": message}
            if location and location != "json":
                entry["in"] = location
            out.append(entry)
    elif isinstance(messages, list):
        for index, value in enumerate(messages):
            out.extend(field_errors(value, location, f"{path}/{index}"))
    else:
        out.append({"pointer": path or "/", "detail": str(messages)})
    return out


class ProblemApi(Api):
    """flask-smorest's Api, answering errors as RFC 9457 problems and documenting them as such."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        # flask-smorest's own, but as application/problem+json: the content type errors really have.
        problem = {MEDIA_TYPE: {"schema": build_reference("schema", self.spec.openapi_version.major, "Problem")}}
        self.spec.components.schema("Problem", schema=ProblemSchema)
        for status in http.HTTPStatus:
            if status >= 400:
                self.spec.components.response(status.name, {"description": status.phrase, "content": problem},
                                              lazy=True)
        self.spec.components.response(
            self.DEFAULT_ERROR_RESPONSE_NAME, {"description": "Any other error.", "content": problem}, lazy=True
        )

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        data = getattr(error, "data", None) or {}
        headers = dict(data.get("headers") or {})
        status = error.code or 500
        title = error.name
        detail = data.get("message") or error.description
        errors = None
        if "messages" in data or "errors" in data:
            errors = field_errors(data.get("errors") or data.get("messages"))
            if errors:
                named = "; ".join(f"{e['pointer'].lstrip('/') or 'body'}: {e['detail']}" for e in errors[:5])
                detail = f"Invalid request: {named}"
        if status == 413:
            detail = "The request body is larger than the service accepts."
        if isinstance(error, HTTPException) and error.response is None:
            for name, value in error.get_headers():
                if name.lower() not in ("content-type", "content-length"):
                    headers.setdefault(name, value)
        return problem_response(status, title, detail, headers, errors=errors)


def require_json_body() -> None:
    """`before_request` for routes that take a JSON body: anything else is 415, not a guess."""
    from werkzeug.exceptions import UnsupportedMediaType

    if request.method in ("POST", "PUT", "PATCH") and request.mimetype != "application/json":
        raise UnsupportedMediaType("The request body must be JSON (Content-Type: application/json).")
    if request.method in ("POST", "PUT", "PATCH"):
        import json as stdlib_json

        from werkzeug.exceptions import BadRequest

        try:
            stdlib_json.loads(request.get_data(cache=True) or b"null")
        except (ValueError, RecursionError):
            # Syntax errors would get webargs' 400 anyway; nesting too deep for the parser and numbers
            # too long to convert escape webargs as a 500, so every unparsable body is answered here.
            invalid = BadRequest("The request body is not valid JSON.")
            invalid.data = {"messages": {"json": ["Invalid JSON body."]}}  # type: ignore[attr-defined]
            raise invalid from None
