"""What the client commands print, and the exit status they end with.

Exit status: 0 when every command ended with status 1 or 2 (or was only submitted); 1 when any
ended with -1 or 0, a batch failed, or the service refused or could not be reached; 2 for a
usage error; 3 when ``--timeout`` ran out before every command ended (and none had failed).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from ukcancel.client import as_tuple
from ukcancel.command import TERMINAL

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMED_OUT = 0, 1, 2, 3
FAILED_STATUSES = (-1, 0)
# Result statuses in the order a summary lists them, with what each means.
STATUS_MEANINGS = (("1", "cancelled"), ("2", "partly cancelled"), ("0", "not cancelled"), ("-1", "error or withdrawn"))
ID_WIDTH = 32  # ids are printed whole, never folded or cut


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """"1 item", "2 items", "1,000 items"."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def to_a_terminal() -> bool:
    """Tables are drawn for a terminal (or a width given in COLUMNS); a pipe or a file gets plain
    tab-separated lines (`print_table`)."""
    return sys.stdout.isatty() or "COLUMNS" in os.environ


def table_console() -> Console:
    return Console()


def _plain(cell: Any) -> str:
    from rich.text import Text

    text = cell.plain if isinstance(cell, Text) else str(cell)
    return " ".join(text.replace("\t", " ").splitlines())


def print_table(table: Table) -> None:
    """A table on stdout. In a terminal: one line per row at the terminal's width (long cells end
    in "...", ids stay whole; --json or a pipe shows everything). Piped: a "# title" line, a header
    line and one line per row, tab-separated, every cell whole."""
    if to_a_terminal():
        for column in table.columns:  # a cell of several lines would make a row of several lines
            column._cells = ["; ".join(c.splitlines()) if isinstance(c, str) else c for c in column._cells]
        widths = [max([len(_plain(column.header)), *(len(_plain(c)) for c in column._cells)]) for column in table.columns]
        # Every column as wide as its widest cell, except the widest text column (an outcome, a
        # product list), which takes what is left and ends in "..." when that is not enough.
        flexible = max((i for i, c in enumerate(table.columns) if c.min_width != ID_WIDTH),
                       key=lambda i: widths[i], default=None)
        console = table_console()
        # Each column has a space either side and a rule after it, plus the first rule.
        room = console.width - 3 * len(table.columns) - 1
        for index, column in enumerate(table.columns):
            column.no_wrap = True
            column.ratio = None
            column.overflow = "ellipsis"
            if index != flexible:
                column.width = widths[index]
        if flexible is not None:
            others = sum(w for i, w in enumerate(widths) if i != flexible)
            table.columns[flexible].width = max(8, min(widths[flexible], room - others))
        console.print(table)
        return
    if table.title:
        click.echo(f"# {_plain(table.title)}")
    click.echo("\t".join(_plain(column.header) for column in table.columns))
    for cells in zip(*(column._cells for column in table.columns)):
        click.echo("\t".join(_plain(cell) for cell in cells))


# -- rows: a command, or a batch item, as one line -----------------------------------------------------
def command_row(command: dict[str, Any]) -> dict[str, Any]:
    """A single command shown like a batch item (its result as the client's tuple once terminal)."""
    result = list(as_tuple(command)) if command["state"] in TERMINAL else None
    return {"index": 0, "command_id": command.get("id"), "job_id": command.get("job_id"),
            "products": command.get("products"), "state": command["state"], "result": result}


def status_of(row: dict[str, Any]) -> int | None:
    """The tuple status of a terminal row, None while it runs (or once its record expired)."""
    result = row.get("result")
    return result[0] if isinstance(result, list) and result else None


def not_fully_cancelled(row: dict[str, Any]) -> bool:
    """What --failed-only keeps: terminal items whose status is not 1 (so -1, 0 or 2)."""
    status = status_of(row)
    return status is not None and status != 1


def outcome_text(result: list[Any] | None, state: str | None) -> str:
    if result is None:
        return state or "expired"
    status, detail = result
    if "ERROR" in detail and len(detail) == 1:
        return str(detail["ERROR"])
    return "; ".join(f"{name} {entry.get('code')}: {entry.get('text')}" for name, entry in detail.items())


def products_text(products: Any) -> str:
    return products if isinstance(products, str) else ",".join(products or [])


def show_table(rows: list[dict[str, Any]], title: str = "Cancellations") -> None:
    """One line per command: job, products, state, tuple status, what each product came to, its id."""
    table = Table(title=title, show_lines=False)
    table.add_column("#", overflow="fold")
    table.add_column("job", overflow="fold")
    table.add_column("products", overflow="fold")
    table.add_column("state", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("outcome", overflow="fold", ratio=1)
    table.add_column("command", no_wrap=True, min_width=ID_WIDTH)
    for row in rows:
        table.add_row(
            str(row.get("index", "")),
            str(row.get("job_id")),
            products_text(row.get("products")),
            str(row.get("state")),
            "" if status_of(row) is None else str(status_of(row)),
            outcome_text(row.get("result"), row.get("state")),
            str(row.get("command_id") or ""),
        )
    print_table(table)


def show_listing(commands: list[dict[str, Any]]) -> None:
    """`ukcancel list`: one line per command, newest first, with its full id."""
    table = Table(title="Cancel commands", show_lines=False)
    table.add_column("id", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("created (UTC)", no_wrap=True, min_width=19)
    for name in ("job", "products", "state", "status"):
        table.add_column(name, overflow="fold")
    table.add_column("outcome", overflow="fold", ratio=1)
    table.add_column("batch", no_wrap=True, min_width=ID_WIDTH)
    for command in commands:
        row = command_row(command)
        table.add_row(
            str(command.get("id")),
            created_text(command.get("created_at")),
            str(command.get("job_id")),
            products_text(command.get("products")),
            str(command.get("state")),
            "" if status_of(row) is None else str(status_of(row)),
            outcome_text(row["result"], row["state"]),
            str(command.get("batch_id") or ""),
        )
    print_table(table)


def created_text(value: Any) -> str:
    """ISO 8601 from the API, shortened to the second for a table."""
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value or "")


# -- batches: a summary whatever their size -------------------------------------------------------------
def batch_summary_lines(view: dict[str, Any]) -> list[str]:
    """Counts by state and by result status, progress and the ETA, in a few lines."""
    counts = view.get("counts") or {}
    results = view.get("results") or {}
    by_state = ", ".join(f"{state} {n}" for state, n in counts.items() if n) or "none yet"
    by_result = ", ".join(f"{status} {meaning} {results.get(status, 0)}" for status, meaning in STATUS_MEANINGS)
    eta = view.get("eta_seconds")
    done = view.get("done_fraction")
    lines = [
        f"batch {view['id']}: {view['state']}, {counted(view['total'], 'item')}"
        + (f", {done:.0%} done" if isinstance(done, (int, float)) else ""),
        f"  by state:  {by_state}",
        f"  by result: {by_result}",
    ]
    if eta is not None:
        lines.append(f"  eta:       {eta:.0f} s")
    if view.get("state") == "failed" and view.get("error"):
        lines.append(f"  error:     {view['error']}")
    return lines


def batch_failed(view: dict[str, Any]) -> bool:
    results = view.get("results") or {}
    return view.get("state") == "failed" or any(results.get(str(status), 0) for status in FAILED_STATUSES)


def batch_done(view: dict[str, Any]) -> bool:
    return view.get("state") in ("completed", "failed")


# -- ending a command -------------------------------------------------------------------------------------
def exit_status(failed: bool, done: bool) -> int:
    if failed:
        return EXIT_FAILED
    return EXIT_OK if done else EXIT_TIMED_OUT


def finish_command(command: dict[str, Any], as_json: bool, waited: bool) -> NoReturn:
    """Print a single command and end with its exit status."""
    row = command_row(command)
    if as_json:
        click.echo(json.dumps(command, indent=2))
    else:
        show_table([row])
    done = command["state"] in TERMINAL
    if waited and not done:
        click.echo(f"still {command['state']} when --timeout ran out; `ukcancel status {command['id']} --wait` "
                   "waits on", err=True)
    failed = status_of(row) in FAILED_STATUSES
    click.get_current_context().exit(exit_status(failed, done or not waited))


def finish_batch(view: dict[str, Any], rows: list[dict[str, Any]] | None, as_json: bool, waited: bool) -> NoReturn:
    """Print a batch: JSON (the view with `rows` as its items), or its summary and, given, `rows`."""
    if as_json:
        click.echo(json.dumps({**view, "items": rows if rows is not None else view.get("items", [])}, indent=2))
    else:
        click.echo("\n".join(batch_summary_lines(view)))
        if rows is not None:
            show_table(rows, title=f"Items of batch {view['id']}")
        failed_items = sum((view.get("results") or {}).get(s, 0) for s in ("-1", "0", "2"))
        if rows is None and failed_items:
            click.echo(f"{counted(failed_items, 'item')} not fully cancelled: `ukcancel status {view['id']} --failed-only` "
                       "lists them", err=True)
    done = batch_done(view)
    if waited and not done:
        click.echo(f"batch still {view['state']} when --timeout ran out; `ukcancel status {view['id']} --wait` "
                   "waits on", err=True)
    click.get_current_context().exit(exit_status(batch_failed(view), done or not waited))
