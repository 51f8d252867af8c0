"""Bearer-token authentication and the caller's identity for each `/v1` request."""

from __future__ import annotations

from flask import g, request
from werkzeug.exceptions import Unauthorized

from ukcancel import logs
from ukcancel.service.current import get_runtime
from ukcancel.token import Principal, TokenRecord

SECURITY_SCHEME = {"type": "http", "scheme": "bearer", "description": "A token issued by `ukcancel token create`."}
CHALLENGE = 'Bearer realm="ukcancel"'


class _InvalidToken(Unauthorized):
    def get_headers(self, environ=None, scope=None):  # type: ignore[no-untyped-def]
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", f'{CHALLENGE}, error="invalid_token"')]


class _MissingToken(Unauthorized):
    def get_headers(self, environ=None, scope=None):  # type: ignore[no-untyped-def]
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", CHALLENGE)]


def bearer_token() -> str | None:
    """The token of a well-formed `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def bearer_record() -> TokenRecord | None:
    """The record of this request's bearer token, looked up once per request.

    Usually the rate limit's hit has read it already, in the same Redis round trip
    (`service.rate_limit`); otherwise it is looked up here.
    """
    if "token_record" not in g:
        token = bearer_token()
        g.token_record = get_runtime().tokens.verify(token) if token else None
    return g.token_record


def looked_up() -> bool:
    """This request's bearer token has been looked up already (its record, or None, is known)."""
    return "token_record" in g


def remember_record(record: TokenRecord | None) -> None:
    """The record of this request's bearer token, as read by the rate limit's hit."""
    g.token_record = record


def authenticate() -> None:
    """`before_request` of every `/v1` blueprint: sets `g.principal` or answers 401."""
    if not request.headers.get("Authorization", ""):
        raise _MissingToken("An Authorization: Bearer token is required.")
    if bearer_token() is None:
        raise _InvalidToken("The Authorization header must be 'Bearer <token>'.")
    record = bearer_record()
    if record is None:
        raise _InvalidToken("The bearer token is unknown or revoked.")
    g.principal = Principal.from_token(record)
    logs.bind(user=record.user_id)


def principal() -> Principal:
    return g.principal
