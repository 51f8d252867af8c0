"""Bearer tokens of the facility's users and integrations. Only SHA-256 digests are stored.

A token is 256 bits from `secrets`, shown once at creation. Looking it up by its digest means
the secret itself is never compared byte by byte; the stored digest is still checked with
`hmac.compare_digest`. Revoking deletes the digest, so it takes effect on the next request.
Each token also has a callback secret, the HMAC key for signing its callbacks.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import redis

from ukcancel import keys
from ukcancel.store import as_text, as_text_dict

TOKEN_PREFIX = "ukc_"
PREFIX_LENGTH = len(TOKEN_PREFIX) + 6  # the start of a token kept in its record, to recognise it
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    name: str
    user_id: str
    admin: bool
    created_at: float
    prefix: str  # the first characters of the token, to recognise it in listings
    callback_secret: str


class TokenError(ValueError):
    pass


class NotPermitted(PermissionError):
    """A user token asked to act for another UKSSDC user (the API answers 403, the stream dead-letters)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name, the UKSSDC UserID it is bound to, and whether it is an admin."""

    token_name: str
    user_id: str
    admin: bool
    callback_secret: str

    @classmethod
    def from_token(cls, record: TokenRecord) -> Principal:
        return cls(record.name, record.user_id, record.admin, record.callback_secret)

    def may_see(self, user_id: str) -> bool:
        return self.admin or user_id == self.user_id

    def acting_for(self, user_id: str | None) -> str:
        """The UKSSDC UserID a request acts for; a user token may act only for its own."""
        if user_id is None or user_id == self.user_id:
            return self.user_id
        if self.admin:
            return user_id
        raise NotPermitted(f"this token acts for {self.user_id}; it may not act for another user_id")


class TokenRegistry:
    """Issues, checks, lists and revokes bearer tokens.

    Redis keys owned: ``ukcancel:token:{sha256}`` and ``ukcancel:tokens`` (see `ukcancel.keys`).
    """

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def create(self, user_id: str, name: str | None = None, admin: bool = False) -> tuple[str, TokenRecord]:
        """A new token (returned once, never stored) and its record."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        prefix = token[:PREFIX_LENGTH]
        name = name or f"{user_id.split('@')[0]}-{prefix[len(TOKEN_PREFIX):]}"
        if not NAME_PATTERN.match(name):
            raise TokenError(f"token name {name!r} must be 1-64 letters, digits or ._@-")
        record = TokenRecord(name, user_id, admin, time.time(), prefix, secrets.token_hex(32))
        token_digest = digest(token)
        if not self.connection.hsetnx(keys.TOKENS, name, token_digest):
            raise TokenError(f"a token named {name!r} exists already")
        self.connection.hset(
            keys.token(token_digest),
            mapping={
                "name": name,
                "user_id": user_id,
                "admin": "1" if admin else "0",
                "created_at": repr(record.created_at),
                "prefix": prefix,
                "digest": token_digest,
                "callback_secret": record.callback_secret,
            },
        )
        return token, record

    def verify(self, token: str) -> TokenRecord | None:
        if not well_formed(token):
            return None
        token_digest = digest(token)
        return record_of(self.connection.hgetall(keys.token(token_digest)), token_digest)

    def by_digest(self, token_digest: str) -> TokenRecord | None:
        """The record of the token with this SHA-256 (a console session holds the digest, never the token)."""
        if not re.fullmatch(r"[0-9a-f]{64}", token_digest or ""):
            return None
        return record_of(self.connection.hgetall(keys.token(token_digest)), token_digest)

    def by_name(self, name: str) -> TokenRecord | None:
        token_digest = self.connection.hget(keys.TOKENS, name)
        if token_digest is None:
            return None
        raw = self.connection.hgetall(keys.token(as_text(token_digest)))
        return _record(as_text_dict(raw)) if raw else None

    def list(self) -> list[TokenRecord]:
        records = [self.by_name(as_text(name)) for name in self.connection.hkeys(keys.TOKENS)]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    def rotate_secret(self, name: str) -> TokenRecord:
        """Give the token named `name` a new callback secret (the old one signs nothing from now on)
        and return its record with the new secret, to be shown once."""
        token_digest = self.connection.hget(keys.TOKENS, name)
        if token_digest is None:
            raise TokenError(f"no token is named {name!r} (`ukcancel token list` shows the names)")
        key = keys.token(as_text(token_digest))
        secret = secrets.token_hex(32)
        # Only while the token exists: a token revoked meanwhile is not brought back as a bare hash.
        pipe = self.connection.pipeline(transaction=True)
        pipe.exists(key)
        pipe.hset(key, "callback_secret", secret)
        exists, _ = pipe.execute()
        if not exists:
            self.connection.delete(key)
            raise TokenError(f"no token is named {name!r} (revoked meanwhile?)")
        record = self.by_name(name)
        if record is None:
            raise TokenError(f"no token is named {name!r} (revoked meanwhile?)")
        return record

    def revoke(self, name_or_prefix: str) -> TokenRecord:
        """Revoke the token with this name, the only token whose prefix starts with it, or the
        token itself, whole (a leaked one pasted in: found by its digest, like a request)."""
        if not name_or_prefix.startswith(TOKEN_PREFIX):  # names cannot contain "_"
            matches = [r for r in self.list() if r.name == name_or_prefix]
        elif len(name_or_prefix) > PREFIX_LENGTH:
            whole = self.verify(name_or_prefix)
            if whole is None:
                # Never echo what may be a whole token back into a terminal or a log.
                raise TokenError(f"{name_or_prefix[:PREFIX_LENGTH]}... is not a valid token (revoked already?)")
            matches = [whole]
        elif len(name_or_prefix) >= len(TOKEN_PREFIX) + 4:
            matches = [r for r in self.list() if r.prefix.startswith(name_or_prefix)]
        else:
            matches = []
        if len(matches) != 1:
            raise TokenError(f"no single token matches {name_or_prefix!r} ({len(matches)} found)")
        record = matches[0]
        token_digest = as_text(self.connection.hget(keys.TOKENS, record.name))
        pipe = self.connection.pipeline(transaction=True)
        pipe.delete(keys.token(token_digest))
        pipe.hdel(keys.TOKENS, record.name)
        pipe.execute()
        self._forget_idempotency_keys(record.name)
        return record

    def _forget_idempotency_keys(self, name: str) -> None:
        """Drop the Idempotency-Key reservations made under `name`: a later token given the same name
        starts with a fresh scope instead of replaying the revoked token's commands. (Its callback
        secret is fresh anyway: every token gets its own.)"""
        batch: list[bytes] = []
        for key in self.connection.scan_iter(match=keys.idempotency(name, "*"), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.connection.delete(*batch)
                batch = []
        if batch:
            self.connection.delete(*batch)


def well_formed(token: str) -> bool:
    """Could be a token this service issued (anything else is never looked up)."""
    return token.startswith(TOKEN_PREFIX) and len(token) <= 128


def record_of(raw: dict[bytes | str, bytes | str], token_digest: str) -> TokenRecord | None:
    """The record of the token whose digest is `token_digest`, from its stored fields (empty: unknown)."""
    if not raw:
        return None
    data = as_text_dict(raw)
    if not hmac.compare_digest(data.get("digest", ""), token_digest):
        return None
    return _record(data)


def _record(data: dict[str, str]) -> TokenRecord:
    return TokenRecord(
        name=data["name"],
        user_id=data["user_id"],
        admin=data.get("admin") == "1",
        created_at=float(data.get("created_at", 0)),
        prefix=data.get("prefix", ""),
        callback_secret=data.get("callback_secret", ""),
    )


def record_key(token_digest: str) -> str:
    """The Redis key of the token record with this digest (for a script that reads it with another
    step, as the API's rate-limit hit does)."""
    return keys.token(token_digest)
