"""`ukcancel token ...`: issue, list and revoke bearer tokens."""

from __future__ import annotations

from typing import Any

import click

from ukcancel.cli.config import load_settings


@click.group()
def token() -> None:
    """Issue, list and revoke bearer tokens (stored in Redis as SHA-256 digests)."""


def _token_registry() -> Any:
    settings = load_settings()
    if settings.embedded:
        raise click.UsageError("token commands need REDIS_URL: an embedded store lives only inside one process")
    from ukcancel.store import connect_redis
    from ukcancel.token import TokenRegistry

    return TokenRegistry(connect_redis(settings))


@token.command("create")
@click.option("--user", "user_id", required=True, help="The UKSSDC registered e-mail the token acts for.")
@click.option("--name", default=None, help="A label for listings and revocation (default: derived).")
@click.option("--admin", is_flag=True, help="May act for any user_id and read everything.")
def token_create(user_id: str, name: str | None, admin: bool) -> None:
    """Create a token and print it once."""
    from marshmallow import ValidationError, validate

    from ukcancel.token import TokenError

    try:
        validate.Email()(user_id)
    except ValidationError:
        raise click.BadParameter(f"{user_id!r} is not an e-mail address", param_hint="--user") from None
    try:
        secret, record = _token_registry().create(user_id, name=name, admin=admin)
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"name:            {record.name}")
    click.echo(f"user_id:         {record.user_id}{'  (admin)' if admin else ''}")
    click.echo(f"callback secret: {record.callback_secret}")
    click.echo(f"token:           {secret}")
    click.echo("The token is shown only now; only its SHA-256 digest is stored.", err=True)


@token.command("list")
def token_list() -> None:
    """List tokens (names, users, prefixes; never the tokens themselves)."""
    from datetime import datetime, timezone

    for record in _token_registry().list():
        created = datetime.fromtimestamp(record.created_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        click.echo(f"{record.name}\t{record.user_id}\t{'admin' if record.admin else 'user'}\t{record.prefix}...\t{created}")


@token.command("revoke")
@click.argument("name_or_prefix")
def token_revoke(name_or_prefix: str) -> None:
    """Revoke a token by its name or the start of the token; effective on the next request."""
    from ukcancel.token import TokenError

    try:
        record = _token_registry().revoke(name_or_prefix)
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"revoked {record.name} ({record.user_id})")
