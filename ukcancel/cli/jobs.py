"""`ukcancel jobs` and `ukcancel plan [apply]`: your UKSSDC jobs, and what a selection would cancel.

`jobs` shows each job's products with their state as last read (`GET /v1/jobs`), waiting for a
fresh read first. `plan` asks the service for a plan (`POST /v1/plans`), waits for it and prints
the table of exactly what would be cancelled and what was left out; `plan apply ID` makes the
batch (`--wait`: with the progress bar of `ukcancel batch --wait`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from rich.table import Table

from ukcancel.cli.commands import TIME_FORMATS, ProductsParam, batch_rows, check_timeout, wait_for_batch, wait_options
from ukcancel.cli.connection import connect, field_messages, service_errors, service_options
from ukcancel.cli.ids import resolve_plan
from ukcancel.cli.show import EXIT_TIMED_OUT, counted, finish_batch, print_table
from ukcancel.client import Client
from ukcancel.jobs import STATE_FILTERS

OPTION_NAMES = {
    "name": "--name", "submitted_after": "--submitted-after", "submitted_before": "--submitted-before",
    "products": "--products", "state": "--state", "job_ids": "--job", "user_id": "--user", "wait": "--wait",
}


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filters of `GET /v1/jobs` and of a plan's selection."""
    for option in reversed([
        click.option("--name", default=None, metavar="GLOB", help="Job name glob, case-insensitive, e.g. 'GRB 26*'."),
        click.option("--submitted-after", type=click.DateTime(TIME_FORMATS), default=None, metavar="TIME",
                     help="Jobs submitted at or after TIME (UTC unless it has an offset)."),
        click.option("--submitted-before", type=click.DateTime(TIME_FORMATS), default=None, metavar="TIME",
                     help="Jobs submitted before TIME."),
        click.option("--products", type=ProductsParam(), default=None,
                     help="Only these products (comma-separated long or short names)."),
        click.option("--job", "job_ids", type=click.IntRange(min=1), multiple=True, metavar="JOBID",
                     help="Only this JobID (repeat for several)."),
        click.option("--user", "user_id", default=None, help="The UKSSDC user whose jobs (admin tokens)."),
    ]):
        command = option(command)
    return command


def selection(name: str | None, submitted_after: datetime | None, submitted_before: datetime | None,
              products: Any, job_ids: tuple[int, ...], user_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "submitted_after": submitted_after, "submitted_before": submitted_before,
            "products": None if products in (None, "all") else products, "job_ids": list(job_ids) or None,
            "user_id": user_id, **extra}


def blame(errors: list[dict[str, Any]]) -> str:
    return field_messages(errors, names=OPTION_NAMES)


def state_cell(product: dict[str, Any]) -> str:
    state = product.get("state")
    return f"{product['name']} {'?' if state is None else state} ({product.get('state_text') or 'not read'})"


def show_jobs(view: dict[str, Any]) -> None:
    table = Table(title=f"Jobs of {view['user_id']}", show_lines=False)
    for column in ("job", "name", "submitted", "products (state)", "read (s ago)"):
        table.add_column(column, overflow="fold")
    for job in view["jobs"]:
        table.add_row(str(job["job_id"]), job["name"], job.get("submitted") or "",
                      "\n".join(state_cell(p) for p in job["products"]) or "-",
                      "" if job.get("age_seconds") is None else f"{job['age_seconds']:.0f}")
    print_table(table)


@click.command("jobs")
@selection_options
@click.option("--state", type=click.Choice(tuple(STATE_FILTERS)), default=None,
              help="Only products in this state: active (1, 2, 3, 5), finished or cancelled.")
@click.option("--wait", type=click.IntRange(0, 60), default=30, show_default=True, metavar="SECONDS",
              help="Wait this long for fresh states when the cached ones are older than the service's TTL.")
@click.option("--json", "as_json", is_flag=True, help="Print the service's view as JSON.")
@service_options
def jobs(state: str | None, wait: int, as_json: bool, api_url: str | None, token: str | None, **filters: Any) -> None:
    """Your UKSSDC jobs with each product's state (-4..5) and how long ago it was read."""
    client = connect(api_url, token)
    with service_errors(client, blame):
        view = client.jobs(wait=wait, **selection(state=state, **filters))
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    show_jobs(view)
    if view.get("error"):
        raise click.ClickException(f"the UKSSDC would not list the jobs: {view['error']}")
    age = view.get("age_seconds")
    note = f"{len(view['jobs'])} of {counted(view.get('total', len(view['jobs'])), 'job')}"
    if age is not None:
        note += f"; states read up to {age:.0f} s ago"
    if view.get("refreshing"):
        note += "; a refresh is still under way (run again, or --wait longer)"
    click.echo(note, err=True)


def show_plan(plan: dict[str, Any]) -> None:
    table = Table(title=f"Plan {plan['id']}: would cancel", show_lines=False)
    for column in ("job", "name", "products"):
        table.add_column(column, overflow="fold")
    for pair in plan["pairs"]:
        table.add_row(str(pair["job_id"]), pair["name"], ", ".join(pair["products"]))
    print_table(table)
    if plan["left_out"]:
        left = Table(title="Left out", show_lines=False)
        for column in ("job", "name", "why"):
            left.add_column(column, overflow="fold")
        for job in plan["left_out"]:
            left.add_row(str(job["job_id"]), job["name"], job["reason"])
        print_table(left)


@click.group("plan", invoke_without_command=True, subcommand_metavar="[apply ID]")
@selection_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120, show_default=True,
              metavar="SECONDS", help="How long to wait for the plan to be computed.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@service_options
@click.pass_context
def plan(ctx: click.Context, timeout: float, as_json: bool, api_url: str | None, token: str | None,
         **filters: Any) -> None:
    """Show exactly what would be cancelled: the active products of the jobs the filters select.

    Nothing is cancelled; apply the plan (before it expires) with `ukcancel plan apply ID`.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"api_url": api_url, "token": token}
        return
    client = connect(api_url, token)
    with service_errors(client, blame):
        plan_id = client.create_plan(**selection(**filters))
        shown = client.wait_plan(plan_id, timeout=timeout)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
    elif shown["state"] == "ready":
        show_plan(shown)
    if shown["state"] == "failed":
        raise click.ClickException(f"the plan could not be computed: {shown.get('error')}")
    if shown["state"] == "computing":
        click.echo(f"plan {plan_id} is still being computed; look again with --json later", err=True)
        ctx.exit(EXIT_TIMED_OUT)
    if not as_json:
        counts = shown["counts"]
        click.echo(f"{counted(counts['products'], 'product')} of {counted(counts['jobs'], 'job')} would be cancelled "
                   f"({counted(counts['left_out'], 'job')} left out); plan expires {shown['expires_at']}", err=True)
        if counts["jobs"]:
            click.echo(f"apply it with: ukcancel plan apply {plan_id}", err=True)


@plan.command("apply")
@click.argument("plan_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait for the batch, with a progress bar, and show the outcomes.")
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (no progress bar).")
@service_options
@click.pass_context
def apply(ctx: click.Context, plan_id: str, wait: bool, timeout: float | None, as_json: bool,
          api_url: str | None, token: str | None) -> None:
    """Cancel exactly what plan ID lists, as one batch (applying it again names the same batch).

    ID is the plan's id or a unique start of it (as `ukcancel plan` prints it).
    """
    check_timeout(wait, timeout)
    parent = ctx.obj or {}
    client: Client = connect(api_url or parent.get("api_url"), token if token is not None else parent.get("token"))
    with service_errors(client):
        plan_id = resolve_plan(client, plan_id)
        batch_id = client.apply_plan(plan_id)
        if not wait:
            if as_json:
                click.echo(json.dumps({"id": batch_id, "kind": "batch", "plan_id": plan_id}))
            else:
                click.echo(f"batch {batch_id} made from plan {plan_id}; follow it with `ukcancel status {batch_id}`")
            return
        view = wait_for_batch(client, batch_id, as_json, timeout)
        rows = batch_rows(client, view, False, False, as_json, small_by_default=True)
    finish_batch(view, rows, as_json, waited=True)

