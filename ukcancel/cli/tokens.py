"""`ukcancel token ...`: issue, list and revoke bearer tokens."""

from __future__ import annotations

import json
from datetime import datetime, timezone
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
@click.option("--json", "as_json", is_flag=True, help="Print name, user_id, token and callback_secret as JSON.")
@click.option("--env", "as_env", is_flag=True,
              help='Print `export UKCANCEL_TOKEN=... UKCANCEL_CALLBACK_SECRET=...` for `eval "$(...)"`.')
def token_create(user_id: str, name: str | None, admin: bool, as_json: bool, as_env: bool) -> None:
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
    from ukcancel.callback import webhook_secret

    # The Standard Webhooks form receivers verify callbacks with (see ukcancel.callback).
    callback_secret = webhook_secret(record.callback_secret)
    if as_json:
        click.echo(json.dumps({"name": record.name, "user_id": record.user_id, "admin": admin, "token": secret,
                               "callback_secret": callback_secret}))
    elif as_env:
        click.echo(f"export UKCANCEL_TOKEN={secret} UKCANCEL_CALLBACK_SECRET={callback_secret}")
    else:
        click.echo(f"name:            {record.name}")
        click.echo(f"user_id:         {record.user_id}{'  (admin)' if admin else ''}")
        click.echo(f"callback secret: {callback_secret}")
        click.echo(f"token:           {secret}")
    click.echo("The token is shown only now; only its SHA-256 digest is stored. "
               "`ukcancel token rotate-secret NAME` issues a new callback secret.", err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def token_list(as_json: bool) -> None:
    """List tokens (names, users, roles, prefixes; never the tokens or their callback secrets)."""
    records = _token_registry().list()
    rows = [token_row(record) for record in records]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from ukcancel.cli.show import print_table

    table = Table(title="Tokens", show_lines=False)
    for column in ("name", "user_id", "role", "prefix", "created (UTC)"):
        table.add_column(column, no_wrap=column in ("name", "prefix"))
    for row in rows:
        table.add_row(row["name"], row["user_id"], row["role"], f"{row['prefix']}...", row["created_at"])
    print_table(table)
    if not rows:
        click.echo("no tokens yet: `ukcancel token create --user EMAIL` issues one", err=True)


def token_row(record: Any) -> dict[str, Any]:
    """What a listing shows of a token: enough to recognise and revoke it, nothing to use it."""
    created = datetime.fromtimestamp(record.created_at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"name": record.name, "user_id": record.user_id, "role": "admin" if record.admin else "user",
            "prefix": record.prefix, "created_at": created}


@token.command("revoke")
@click.argument("name_or_token", metavar="NAME|TOKEN")
def token_revoke(name_or_token: str) -> None:
    """Revoke a token by its name, the start of the token (its listed prefix) or the whole token.

    Pasting a leaked token revokes it (it is found by its SHA-256, like a request); effective on
    the next request.
    """
    from ukcancel.token import TokenError

    try:
        record = _token_registry().revoke(name_or_token.strip())
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"revoked {record.name} ({record.user_id})")


@token.command("rotate-secret")
@click.argument("name")
def token_rotate_secret(name: str) -> None:
    """Issue a new callback secret for the token NAME and show it once (the old one stops signing).

    The token itself is unchanged. Callbacks sent from now on are signed with the new secret;
    give it to the token's holder.
    """
    from ukcancel.callback import webhook_secret
    from ukcancel.token import TokenError

    try:
        record = _token_registry().rotate_secret(name.strip())
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"name:            {record.name}")
    click.echo(f"user_id:         {record.user_id}")
    click.echo(f"callback secret: {webhook_secret(record.callback_secret)}")
    click.echo("The callback secret is shown only now.", err=True)
