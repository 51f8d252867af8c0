"""`ukcancel cancel / batch / status / list / withdraw`: the service's client on the command line.

They talk HTTP to the service at ``--api-url`` (``UKCANCEL_API_URL``, default
http://127.0.0.1:8000) with ``--token`` (``UKCANCEL_TOKEN``). Results are a table, or JSON with
``--json`` for scripts. Arguments and batch files are checked before anything is sent; what the
service still refuses is turned back into a click error that names the argument or the item.

A batch is shown as a summary (counts by state and by result, ETA) whatever its size; its items
are listed with ``--items``, or only those not fully cancelled with ``--failed-only``. Commands
and batches are named by their full id or a unique start of it (`ukcancel.cli.ids`).

Exit status: see `ukcancel.cli.show` (0 done, 1 failed or refused, 2 usage, 3 timed out).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ukcancel import products as product_names
from ukcancel.cli.batch_file import read_batch_file
from ukcancel.cli.connection import connect, field_messages, service_errors, service_options, warn_if_no_worker
from ukcancel.cli.ids import COMMAND, resolve
from ukcancel.cli.show import counted, finish_batch, finish_command, not_fully_cancelled, show_listing
from ukcancel.client import Client, ServiceError
from ukcancel.command import STATES, TERMINAL
from ukcancel.schemas import MAX_JOB_ID

# `batch --wait` and `cancel --wait` list the items as well as the summary up to this size.
SMALL_BATCH = 100
LIST_DEFAULT_LIMIT = 50
LIST_MAX_LIMIT = 200  # the API's largest page
INTERRUPTED = 130  # the shell's status for Ctrl-C
TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


# -- shared options ------------------------------------------------------------------------------------
class ProductsParam(click.ParamType):
    """``all`` or comma-separated long or short product names; loads to long names or "all"."""

    name = "PRODUCTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | list[str]:
        if isinstance(value, list):
            return value
        text = str(value).strip()
        if text.lower() == product_names.ALL:
            return product_names.ALL
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            self.fail("name at least one product, or all", param, ctx)
        try:
            return product_names.normalise(names)
        except product_names.UnknownProduct as exc:
            self.fail(str(exc), param, ctx)


def wait_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
        help="With --wait: stop waiting after this long (exit 3 if not everything has ended).",
    )(command)
    return command


def item_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--failed-only", is_flag=True,
        help="List only the items not fully cancelled (status -1, 0 or 2).",
    )(command)
    command = click.option("--items", "all_items", is_flag=True, help="List every item of a batch, not only its summary.")(
        command
    )
    return command


def check_timeout(wait: bool, timeout: float | None) -> None:
    if timeout is not None and not wait:
        raise click.UsageError("--timeout bounds a wait: give it with --wait")


@contextmanager
def waiting_on(identifier: str) -> Iterator[None]:
    """Ctrl-C while waiting stops the wait, not the command: say how to look at it later."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; it goes on in the service: `ukcancel status {identifier}`", err=True)
        click.get_current_context().exit(INTERRUPTED)


# -- waiting and showing -----------------------------------------------------------------------------------
def wait_for_command(client: Client, command_id: str, timeout: float | None) -> dict[str, Any]:
    warn_if_no_worker(client)
    with waiting_on(command_id):
        return client.wait(command_id, timeout=timeout)


def wait_for_batch(client: Client, batch_id: str, as_json: bool, timeout: float | None) -> dict[str, Any]:
    """Wait for a batch (its view without items); a live progress bar on stderr unless the output is JSON."""
    warn_if_no_worker(client)
    with waiting_on(batch_id):
        if as_json:
            return client.wait_batch(batch_id, timeout=timeout, items=False)
        with Progress(
            TextColumn("[bold]batch {task.fields[batch_id]}[/] {task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=Console(stderr=True),
        ) as bar:
            task: TaskID = bar.add_task("batch", total=None, batch_id=batch_id, state="", eta="")

            def update(view: dict[str, Any]) -> None:
                counts = view.get("counts", {})
                done = sum(counts.get(state, 0) for state in TERMINAL)
                eta = view.get("eta_seconds")
                bar.update(task, total=view.get("total") or None, completed=done, state=view.get("state", ""),
                           eta=f"eta {eta:.0f} s" if eta is not None else "")

            return client.wait_batch(batch_id, progress=update, timeout=timeout, items=False)


def batch_rows(client: Client, view: dict[str, Any], all_items: bool, failed_only: bool,
               as_json: bool, small_by_default: bool) -> list[dict[str, Any]] | None:
    """The items to print (all of them, or --failed-only's), or None for the summary alone.

    JSON carries every item unless --failed-only; a table only when asked for (or, after a
    wait, for a small batch), so a 10,000-item batch is a summary unless --items says otherwise.
    """
    small = small_by_default and view.get("total", 0) <= SMALL_BATCH
    if not (as_json or all_items or failed_only or small):
        return None
    items = list(client.batch_items(view["id"]))
    return [item for item in items if not_fully_cancelled(item)] if failed_only else items


# -- the commands ------------------------------------------------------------------------------------
@click.command()
@click.argument("jobs", metavar="JOB [JOB ...]", nargs=-1, required=True, type=click.IntRange(1, MAX_JOB_ID))
@click.option("--products", "what", default="all", show_default=True, type=ProductsParam(),
              help="Comma-separated product names (e.g. LightCurve,StandardPos or lc,psf), or all.")
@click.option("--user", "user_id", default=None, help="The UKSSDC user the jobs belong to (admin tokens).")
@click.option("--wait", is_flag=True, help="Wait for the outcome and show it.")
@wait_options
@item_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@service_options
def cancel(jobs: tuple[int, ...], what: str | list[str], user_id: str | None, wait: bool, timeout: float | None,
           all_items: bool, failed_only: bool, as_json: bool, api_url: str | None, token: str | None) -> None:
    """Cancel products of one or more jobs (several jobs go as one batch)."""
    check_timeout(wait, timeout)
    client = connect(api_url, token)
    names = {"job_id": "JOB", "products": "--products", "user_id": "--user"}

    def blame(errors: list[dict[str, Any]]) -> str:
        return field_messages(errors, lambda i: f"JOB {jobs[i]}", names)

    with service_errors(client, blame):
        if len(jobs) == 1:
            command_id = client.submit(jobs[0], what, user_id=user_id)
            if not wait:
                emit_submitted({"id": command_id, "kind": "command"}, as_json)
                return
            finish_command(wait_for_command(client, command_id, timeout), as_json, waited=True)
        batch_id = client.submit_batch([{"job_id": job, "products": what} for job in jobs], user_id=user_id)
        if not wait:
            emit_submitted({"id": batch_id, "kind": "batch", "total": len(jobs)}, as_json)
            return
        view = wait_for_batch(client, batch_id, as_json, timeout)
        rows = batch_rows(client, view, all_items, failed_only, as_json, small_by_default=True)
    finish_batch(view, rows, as_json, waited=True)


@click.command()
@click.argument("file", metavar="FILE", required=False,
                type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--all-active", is_flag=True, help="Cancel every product of your jobs that is still being built.")
@click.option("--user", "user_id", default=None, help="The UKSSDC user the jobs belong to (admin tokens).")
@click.option("--wait", is_flag=True, help="Wait for the whole batch, with a progress bar, and show the outcomes.")
@wait_options
@item_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (no progress bar).")
@service_options
def batch(file: Path | None, all_active: bool, user_id: str | None, wait: bool, timeout: float | None,
          all_items: bool, failed_only: bool, as_json: bool, api_url: str | None, token: str | None) -> None:
    """Cancel many jobs from a CSV (job_id,products) or JSON FILE, or every active product (--all-active).

    Every item of FILE is checked first; a bad one is reported by its index (and CSV line) and
    nothing is submitted.
    """
    if (file is None) == (not all_active):
        raise click.UsageError("give a FILE or --all-active (one of the two)")
    check_timeout(wait, timeout)
    parsed = read_batch_file(file) if file is not None else None
    client = connect(api_url, token)

    def blame(errors: list[dict[str, Any]]) -> str:
        return field_messages(errors, parsed.name_item if parsed else str, {"items": "FILE", "user_id": "--user"})

    with service_errors(client, blame):
        items = parsed.items if parsed is not None else None
        batch_id = client.submit_batch(items, all_active=all_active, user_id=user_id)
        if not wait:
            emit_submitted({"id": batch_id, "kind": "batch", "total": len(items) if items else None}, as_json)
            return
        view = wait_for_batch(client, batch_id, as_json, timeout)
        rows = batch_rows(client, view, all_items, failed_only, as_json, small_by_default=True)
    finish_batch(view, rows, as_json, waited=True)


@click.command()
@click.argument("identifier", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait until the command (every item of the batch) has ended.")
@wait_options
@item_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@service_options
def status(identifier: str, wait: bool, timeout: float | None, all_items: bool, failed_only: bool, as_json: bool,
           api_url: str | None, token: str | None) -> None:
    """Show a cancel command or a batch by its id, or a unique start of it.

    A batch is shown as a summary; --items lists its items, --failed-only those not fully
    cancelled. Exit 1 if any command ended with -1 or 0.
    """
    check_timeout(wait, timeout)
    client = connect(api_url, token)
    with service_errors(client):
        target = resolve(client, identifier)
        if target.kind == COMMAND:
            command = client.get(target.id)
            if wait and command["state"] not in TERMINAL:
                command = wait_for_command(client, target.id, timeout)
            finish_command(command, as_json, waited=wait)
        view = client.get_batch(target.id, limit=1)
        if wait and view["state"] not in ("completed", "failed"):
            view = wait_for_batch(client, target.id, as_json, timeout)
        rows = batch_rows(client, view, all_items, failed_only, as_json, small_by_default=False)
    finish_batch(view, rows, as_json, waited=wait)


@click.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only commands in this state.")
@click.option("--job", "job_id", type=click.IntRange(1, MAX_JOB_ID), default=None, help="Only commands for this JobID.")
@click.option("--created-after", type=click.DateTime(TIME_FORMATS), default=None, metavar="TIME",
              help="Only commands created after this time (UTC unless it has an offset), e.g. 2026-11-20T10:00:00.")
@click.option("--user", "user_id", default=None,
              help="Admin tokens: only this UKSSDC user's commands (default: every user's).")
@click.option("--limit", type=click.IntRange(1, LIST_MAX_LIMIT), default=None,
              help=f"Commands to show (default {LIST_DEFAULT_LIMIT}, at most {LIST_MAX_LIMIT}).")
@click.option("--cursor", default=None, help="Carry on from where a previous listing stopped (its next cursor).")
@click.option("--all", "all_pages", is_flag=True, help="Every matching command, following every page.")
@click.option("--json", "as_json", is_flag=True, help='Print JSON ({"items", "next_cursor"}) instead of a table.')
@service_options
def list_commands(state: str | None, job_id: int | None, created_after: datetime | None, user_id: str | None,
                  limit: int | None, cursor: str | None, all_pages: bool, as_json: bool, api_url: str | None,
                  token: str | None) -> None:
    """List your cancel commands, newest first (an admin token: every user's)."""
    if all_pages and limit is not None:
        raise click.UsageError("--all lists every command; --limit only some: give one of them")
    client = connect(api_url, token)
    filters = {"state": state, "job_id": job_id, "created_after": created_after, "user_id": user_id}
    names = {"state": "--state", "job_id": "--job", "created_after": "--created-after", "user_id": "--user",
             "limit": "--limit", "cursor": "--cursor"}
    with service_errors(client, lambda errors: field_messages(errors, names=names)):
        wanted = None if all_pages else (limit or LIST_DEFAULT_LIMIT)
        commands, next_cursor = collect_commands(client, filters, cursor, wanted)
    if as_json:
        click.echo(json.dumps({"items": commands, "next_cursor": next_cursor}, indent=2))
        return
    show_listing(commands)
    if next_cursor:
        click.echo(f"{len(commands)} shown; more with --cursor {next_cursor} (or --all)", err=True)
    else:
        click.echo(counted(len(commands), "command"), err=True)


def collect_commands(client: Client, filters: dict[str, Any], cursor: str | None,
                     wanted: int | None) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `wanted` commands (None: all), and the cursor after them.

    With filters the API may answer a short page before the end (it scans a bounded number of
    entries per request), so pages are followed until `wanted` commands are in hand.
    """
    commands: list[dict[str, Any]] = []
    while True:
        size = LIST_MAX_LIMIT if wanted is None else wanted - len(commands)
        page = client.list_page(**filters, limit=size, cursor=cursor)
        commands.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor or (wanted is not None and len(commands) >= wanted):
            return commands, cursor


@click.command()
@click.argument("identifier", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the withdrawn command (or the batch) as JSON.")
@service_options
def withdraw(identifier: str, as_json: bool, api_url: str | None, token: str | None) -> None:
    """Withdraw a queued command, or every queued item of a batch, before it reaches the UKSSDC.

    ID is a command or batch id, or a unique start of it. A command that has started is not
    withdrawn (exit 1); a batch's started items finish as usual.
    """
    client = connect(api_url, token)
    with service_errors(client):
        target = resolve(client, identifier)
        if target.kind == COMMAND:
            try:
                command = client.withdraw(target.id)
            except ServiceError as exc:
                if exc.status != 409:
                    raise
                state = client.get(target.id)["state"]
                raise click.ClickException(f"command {target.id} is {state}: only a queued command can be "
                                           "withdrawn") from None
            emit_withdrawn_command(command, as_json)
            return
        aborted_before = client.get_batch(target.id, limit=1)["counts"].get("aborted", 0)
        view = client.withdraw_batch(target.id)
    emit_withdrawn_batch(view, view["counts"].get("aborted", 0) - aborted_before, as_json)


def emit_withdrawn_command(command: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(command, indent=2))
    else:
        click.echo(f"command {command['id']} (job {command['job_id']}) withdrawn: {command['state']}; "
                   "the UKSSDC was not called")


def emit_withdrawn_batch(view: dict[str, Any], withdrawn: int, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**view, "withdrawn": withdrawn}, indent=2))
        return
    counts = view["counts"]
    started = sum(counts.get(state, 0) for state in ("running", "retrying"))
    click.echo(f"batch {view['id']}: withdrew {counted(withdrawn, 'queued item')}; {counted(started, 'started item')} "
               "finish as usual, "
               f"{counts.get('completed', 0)} had ended")


def emit_submitted(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(f"{document['kind']} {document['id']} submitted; `ukcancel status {document['id']}` shows it")

