"""How the client commands reach the service, and how its answers become click errors.

Every way a request can go wrong ends as a short message and an exit status, never a
traceback: a refusal of the service (exit 1; a 422 that names the command's arguments is a
usage error, exit 2), an unreachable service or another server at that URL (exit 1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import click
import requests

from ukcancel.cli.config import load_settings
from ukcancel.client import Client, ServiceError, UnexpectedAnswer

Blame = Callable[[list[dict[str, Any]]], str | None]


class ApiUrl(click.ParamType):
    """The service's base URL: http(s), with a host; a missing scheme gets a suggestion."""

    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        parts = urlsplit(text)
        if parts.scheme in ("http", "https") and parts.netloc:
            return text.rstrip("/")
        hint = f"; did you mean http://{text}?" if "://" not in text and text else ""
        self.fail(f"{text!r} is not an http:// or https:// URL{hint}", param, ctx)


def service_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--token", default=None, help="Bearer token (default: UKCANCEL_TOKEN)."
    )(command)
    command = click.option(
        "--api-url", type=ApiUrl(), envvar="UKCANCEL_API_URL", show_envvar=True, default=None,
        help="The service's base URL (default: http://127.0.0.1:8000).",
    )(command)
    return command


def short_reason(exc: BaseException) -> str:
    """The cause of a connection failure in a few words ("Connection refused", "timed out"), not
    the chain of pools and retries a transport library wraps it in."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def connect(api_url: str | None, token: str | None) -> Client:
    settings = load_settings()
    if token is not None and not token.strip():
        # An empty --token (say, an unset shell variable) must not quietly become UKCANCEL_TOKEN.
        raise click.BadParameter("is empty; give a token, or leave --token out to use UKCANCEL_TOKEN",
                                 param_hint="--token")
    if api_url is not None and not api_url.strip():
        raise click.BadParameter("is empty; give the service's URL, or leave it out to use UKCANCEL_API_URL",
                                 param_hint="--api-url")
    token = token if token is not None else settings.token
    if not token:
        raise click.UsageError("no token: pass --token or set UKCANCEL_TOKEN (see `ukcancel token create`)")
    return Client(api_url or settings.api_url, token, connect_attempts=2)


@contextmanager
def service_errors(client: Client, blame: Blame | None = None) -> Iterator[None]:
    """Turn the service's refusals and an unreachable service into click errors, never a traceback.

    `blame` turns a 422's field errors into the message of a usage error (exit 2); other
    refusals are plain errors (exit 1).
    """
    try:
        yield
    except UnexpectedAnswer as exc:
        seen = f": {exc.glimpse!r}" if exc.glimpse else ""
        raise click.ClickException(
            f"{client.base_url} does not answer as the ukssdc-cancel API (HTTP {exc.status}, {exc.content_type}"
            f"{seen}); check --api-url / UKCANCEL_API_URL"
        ) from None
    except ServiceError as exc:
        errors = exc.problem.get("errors") or []
        if exc.status == 422 and blame is not None and errors:
            message = blame(errors)
            if message:
                raise click.UsageError(message) from None
        detail = exc.problem.get("detail") or exc.problem.get("title") or "no detail"
        raise click.ClickException(f"the service refused (HTTP {exc.status}): {detail}") from None
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach the service at {client.base_url}: {short_reason(exc)}") from None


def field_messages(errors: list[dict[str, Any]], name_item: Callable[[int], str] | None = None,
                   names: dict[str, str] | None = None) -> str:
    """'JOB: Must be greater ...' lines from problem+json pointers."""
    lines = []
    for error in errors:
        parts = error.get("pointer", "/").strip("/").split("/")
        if parts[0] == "items" and len(parts) >= 2 and parts[1].isdigit() and name_item is not None:
            where = f"{name_item(int(parts[1]))}, {'/'.join(parts[2:]) or 'item'}"
        else:
            where = (names or {}).get(parts[0], "/".join(parts) or "request")
        lines.append(f"{where}: {error.get('detail')}")
    return "\n".join(lines)


def warn_if_no_worker(client: Client) -> None:
    """Say at once when the service reports no live worker (or no Redis): a wait would only sit.

    `/readyz` is advice here: when it cannot be read (an older service, a proxy), say nothing.
    """
    try:
        readiness = client.readiness()
    except (ServiceError, requests.RequestException):
        return
    if readiness.get("status") == "ok":
        return
    checks = readiness.get("checks") or {}
    if readiness.get("status") == "degraded":
        paused = checks.get("fleet_paused_seconds", "?")
        click.echo(
            f"warning: {client.base_url}/readyz reports the fleet paused for {paused} s more (a UKSSDC "
            "Retry-After): no UKSSDC call is made until it ends or an administrator runs "
            "`ukcancel fleet --resume`. Waiting anyway; --timeout bounds the wait.",
            err=True,
        )
        return
    failing = "; ".join(f"{name}: {value}" for name, value in checks.items() if name in ("redis", "workers"))
    click.echo(
        f"warning: {client.base_url}/readyz reports the service is not ready ({failing or 'no detail'}); "
        "nothing runs until a worker is live (start one with `ukcancel worker`). Waiting anyway; "
        "--timeout bounds the wait.",
        err=True,
    )
