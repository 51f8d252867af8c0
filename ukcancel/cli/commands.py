"""`ukcancel cancel`, `ukcancel batch`, `ukcancel status`: the service's client on the command line.

They talk HTTP to the service at ``--api-url`` (``UKCANCEL_API_URL``, default
http://127.0.0.1:8000) with ``--token`` (``UKCANCEL_TOKEN``). Results are a table, or JSON with
``--json`` for scripts. The service validates what is sent; its answer is turned back into a
click error that names the argument, the file line or the item.

Exit status: 0 when every command ended with status 1 or 2 (or was only submitted); 1 when any
ended with -1 or 0, or the service refused or could not be reached; 2 for a usage error.

Batch files are read and validated, every item before anything is sent, by
`ukcancel.cli.batch_file`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ukcancel.cli import load_settings
from ukcancel.cli.batch_file import read_batch_file
from ukcancel.client import TERMINAL, Client, ServiceError, as_tuple

FAILED_STATUSES = (-1, 0)


# -- talking to the service ----------------------------------------------------------------------
def service_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--token", default=None, help="Bearer token (default: UKCANCEL_TOKEN)."
    )(command)
    command = click.option(
        "--api-url", default=None, help="The service's base URL (default: UKCANCEL_API_URL or http://127.0.0.1:8000)."
    )(command)
    return command


def connect(api_url: str | None, token: str | None) -> Client:
    settings = load_settings()
    token = token or settings.token
    if not token:
        raise click.UsageError("no token: pass --token or set UKCANCEL_TOKEN (see `ukcancel token create`)")
    return Client(api_url or settings.api_url, token, connect_attempts=2)


@contextmanager
def service_errors(api_url: str | None, blame: Callable[[list[dict[str, Any]]], str | None] | None = None) -> Iterator[None]:
    """Turn the service's refusals and an unreachable service into click errors, never a traceback.

    `blame` turns a 422's field errors into the message of a usage error (exit 2); other
    refusals are plain errors (exit 1).
    """
    try:
        yield
    except ServiceError as exc:
        errors = exc.problem.get("errors") or []
        if exc.status == 422 and blame is not None and errors:
            message = blame(errors)
            if message:
                raise click.UsageError(message) from None
        detail = exc.problem.get("detail") or exc.problem.get("title") or "no detail"
        raise click.ClickException(f"the service refused (HTTP {exc.status}): {detail}") from None
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach the service at {api_url or load_settings().api_url}: {exc}") from None
    except ValueError as exc:  # a body that is not JSON: not this service
        raise click.ClickException(f"unexpected answer from the service: {exc}") from None


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


# -- showing results -----------------------------------------------------------------------------
def outcome_text(result: list[Any] | None, state: str | None) -> str:
    if result is None:
        return state or "expired"
    status, detail = result
    if "ERROR" in detail and len(detail) == 1:
        return str(detail["ERROR"])
    return "; ".join(f"{name} {entry.get('code')}: {entry.get('text')}" for name, entry in detail.items())


def show_table(rows: list[dict[str, Any]]) -> None:
    """One line per command: job, products, state, tuple status and what each product came to."""
    table = Table(title="Cancellations", show_lines=False)
    for column in ("#", "job", "products", "state", "status", "outcome"):
        table.add_column(column, overflow="fold")
    for row in rows:
        result = row.get("result")
        products = row.get("products")
        table.add_row(
            str(row.get("index", "")),
            str(row.get("job_id")),
            products if isinstance(products, str) else ",".join(products or []),
            str(row.get("state")),
            "" if result is None else str(result[0]),
            outcome_text(result, row.get("state")),
        )
    Console().print(table)


def command_row(command: dict[str, Any]) -> dict[str, Any]:
    """A single command shown like a batch item (its result as the client's tuple once terminal)."""
    result = list(as_tuple(command)) if command["state"] in TERMINAL else None
    return {"index": 0, "job_id": command["job_id"], "products": command["products"],
            "state": command["state"], "result": result}


def any_failed(rows: list[dict[str, Any]]) -> bool:
    return any(row.get("result") is not None and row["result"][0] in FAILED_STATUSES for row in rows)


def finish(rows: list[dict[str, Any]], document: dict[str, Any], as_json: bool) -> NoReturn:
    """Print the outcome and end the command with its exit status."""
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        if document.get("state") == "failed" and document.get("error"):
            click.echo(f"batch failed: {document['error']}", err=True)
        show_table(rows)
    failed = any_failed(rows) or document.get("state") == "failed"
    click.get_current_context().exit(1 if failed else 0)


def wait_with_progress(client: Client, batch_id: str, as_json: bool) -> dict[str, Any]:
    """Wait for a batch; a live progress bar on stderr unless the output is JSON."""
    if as_json:
        return client.wait_batch(batch_id)
    with Progress(
        TextColumn("[bold]batch {task.fields[short_id]}[/] {task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        console=Console(stderr=True),
    ) as bar:
        task: TaskID = bar.add_task("batch", total=None, short_id=batch_id[:8], state="", eta="")

        def update(view: dict[str, Any]) -> None:
            counts = view.get("counts", {})
            done = sum(counts.get(state, 0) for state in TERMINAL)
            eta = view.get("eta_seconds")
            bar.update(task, total=view.get("total") or None, completed=done, state=view.get("state", ""),
                       eta=f"eta {eta:.0f} s" if eta is not None else "")

        return client.wait_batch(batch_id, progress=update)


# -- the commands ------------------------------------------------------------------------------------
@click.command()
@click.argument("jobs", metavar="JOB [JOB ...]", nargs=-1, required=True, type=click.INT)
@click.option("--products", default="all", show_default=True,
              help="Comma-separated product names (e.g. LightCurve,StandardPos), or all.")
@click.option("--user", "user_id", default=None, help="The UKSSDC user the jobs belong to (admin tokens).")
@click.option("--wait", is_flag=True, help="Wait for the outcome and show it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@service_options
def cancel(jobs: tuple[int, ...], products: str, user_id: str | None, wait: bool, as_json: bool,
           api_url: str | None, token: str | None) -> None:
    """Cancel products of one or more jobs (several jobs go as one batch)."""
    what: str | list[str] = "all" if products.strip() == "all" else [p.strip() for p in products.split(",") if p.strip()]
    client = connect(api_url, token)
    names = {"job_id": "JOB", "products": "--products", "user_id": "--user"}

    def blame(errors: list[dict[str, Any]]) -> str:
        return field_messages(errors, lambda i: f"JOB {jobs[i]}", names)

    with service_errors(api_url, blame):
        if len(jobs) == 1:
            command_id = client.submit(jobs[0], what, user_id=user_id)
            if not wait:
                emit_submitted({"id": command_id, "kind": "command"}, as_json)
                return
            command = client.wait(command_id)
            rows = [command_row(command)]
            finish(rows, command, as_json)
        batch_id = client.submit_batch([{"job_id": job, "products": what} for job in jobs], user_id=user_id)
        if not wait:
            emit_submitted({"id": batch_id, "kind": "batch", "total": len(jobs)}, as_json)
            return
        view = wait_with_progress(client, batch_id, as_json)
    finish(view["items"], view, as_json)


@click.command()
@click.argument("file", metavar="FILE", required=False,
                type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--all-active", is_flag=True, help="Cancel every product of your jobs that is still being built.")
@click.option("--user", "user_id", default=None, help="The UKSSDC user the jobs belong to (admin tokens).")
@click.option("--wait", is_flag=True, help="Wait for the whole batch, with a progress bar, and show the outcomes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (no progress bar).")
@service_options
def batch(file: Path | None, all_active: bool, user_id: str | None, wait: bool, as_json: bool,
          api_url: str | None, token: str | None) -> None:
    """Cancel many jobs from a CSV (job_id,products) or JSON FILE, or every active product (--all-active).

    Every item of FILE is checked first; a bad one is reported by its index (and CSV line) and
    nothing is submitted.
    """
    if (file is None) == (not all_active):
        raise click.UsageError("give a FILE or --all-active (one of the two)")
    parsed = read_batch_file(file) if file is not None else None
    items = parsed.items if parsed is not None else None
    client = connect(api_url, token)

    def blame(errors: list[dict[str, Any]]) -> str:
        return field_messages(errors, parsed.name_item if parsed else str, {"items": "FILE", "user_id": "--user"})

    with service_errors(api_url, blame):
        batch_id = client.submit_batch(items, all_active=all_active, user_id=user_id)
        if not wait:
            emit_submitted({"id": batch_id, "kind": "batch", "total": len(items) if items else None}, as_json)
            return
        view = wait_with_progress(client, batch_id, as_json)
    finish(view["items"], view, as_json)


@click.command()
@click.argument("identifier", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@service_options
def status(identifier: str, as_json: bool, api_url: str | None, token: str | None) -> None:
    """Show a cancel command or a batch by its id (exit 1 if any command ended with -1 or 0)."""
    client = connect(api_url, token)
    with service_errors(api_url):
        try:
            command = client.get(identifier)
        except ServiceError as exc:
            if exc.status != 404:
                raise
        else:
            finish([command_row(command)], command, as_json)
        try:
            view = client.get_batch(identifier)
        except ServiceError as exc:
            if exc.status == 404:
                raise click.ClickException(f"no cancel command or batch {identifier} visible to this token") from None
            raise
        view["items"] = list(client.batch_items(identifier))
        view["next_cursor"] = None
    if not as_json:
        counts = ", ".join(f"{state} {n}" for state, n in view["counts"].items() if n)
        click.echo(f"batch {view['id']}: {view['state']}, {view['total']} items ({counts or 'none yet'})", err=True)
    finish(view["items"], view, as_json)


def emit_submitted(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(f"{document['kind']} {document['id']} submitted; `ukcancel status {document['id']}` shows it")
