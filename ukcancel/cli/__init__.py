"""`ukcancel`: the one console command of ukssdc-cancel.

The group and the commands that run the parts live here; each other family of subcommands has
its own module in this package and is attached at the bottom.
"""

from __future__ import annotations

import os
import sys

import click

from ukcancel.cli.config import load_settings
from ukcancel.settings import Settings

LOCAL_USER = "astro@example.org"


class Ukcancel(click.Group):
    """The command group; a Redis or service connection that fails ends a command in one line
    (exit 1), never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        import redis

        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            from ukcancel.cli.connection import short_reason
            from ukcancel.settings import shown_value

            where = os.environ.get("REDIS_URL", "").strip()
            shown = shown_value("REDIS_URL", where) if where else "REDIS_URL"
            raise click.ClickException(f"cannot reach Redis at {shown}: {short_reason(exc)}") from None


@click.group(cls=Ukcancel, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ukssdc-cancel")
def main() -> None:
    """Cancel UKSSDC XRT product jobs through a queue."""


# -- running the parts ------------------------------------------------------------------------
@main.command()
def demo() -> None:
    """Run API, worker and UKSSDC simulator in one process and walk the guide's scenario."""
    from ukcancel.cli.demo import run_demo

    sys.exit(run_demo(click.echo))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes (with REDIS_URL).")
@click.option("--local-user", default=LOCAL_USER, show_default=True,
              help="Embedded mode only: the UKSSDC UserID of the token printed at start-up.")
@click.option("--simulator", "with_simulator", is_flag=True,
              help="Embedded mode only: start the built-in UKSSDC simulator and send every call to it, "
                   "not to the UKSSDC.")
def serve(host: str, port: int, workers: int, local_user: str, with_simulator: bool) -> None:
    """Run the HTTP API (with an embedded store and worker when REDIS_URL is unset)."""
    settings = load_settings()
    if settings.embedded:
        _serve_embedded(settings, host, port, local_user, with_simulator)
    elif with_simulator:
        raise click.UsageError("--simulator is for the embedded mode (no REDIS_URL); with REDIS_URL run "
                               "`ukcancel simulator` and set UKSSDC_BASE_URL for the workers")
    else:
        from ukcancel.cli.gunicorn_server import run_gunicorn

        run_gunicorn(host, port, workers)


def warn_production_target(base_url: str, user_id: str) -> None:
    """Loudly, on stderr: an embedded trial would cancel real jobs at the UKSSDC with a local token."""
    from rich.console import Console
    from rich.panel import Panel

    Console(stderr=True).print(Panel(
        "This embedded service sends its cancellations to the PRODUCTION UKSSDC:\n"
        f"  {base_url}\n"
        f"Real jobs of {user_id} are cancelled there by anyone holding the local token below.\n"
        "For a trial, run `ukcancel serve --simulator` instead (or set UKSSDC_BASE_URL).",
        title="WARNING: production UKSSDC", border_style="bold red", style="bold",
    ))


def _serve_embedded(settings: Settings, host: str, port: int, local_user: str, with_simulator: bool) -> None:
    from contextlib import ExitStack

    from werkzeug.serving import make_server

    from ukcancel import logs
    from ukcancel.assemble import create_api, create_runtime
    from ukcancel.settings import PRODUCTION_BASE_URL
    from ukcancel.simulator import SimulatorServer, SimulatorState
    from ukcancel.stream import CommandStreamConsumer
    from ukcancel.worker.embedded import EmbeddedWorker

    with ExitStack() as running:
        if with_simulator:
            simulator = running.enter_context(SimulatorServer(SimulatorState(), host="127.0.0.1"))
            settings = settings.replace(ukssdc_base_url=simulator.base_url)
        logs.configure(settings)  # API, embedded worker and stream consumer alike, to stderr
        runtime = create_runtime(settings)
        token, record = runtime.tokens.create(local_user, name="local")
        app = create_api(runtime=runtime)
        click.echo("REDIS_URL is not set: running with an embedded in-memory store and worker (nothing is kept).")
        if with_simulator:
            click.echo(f"UKSSDC base URL: {settings.ukssdc_base_url} (the built-in simulator; the UKSSDC is never called)")
        else:
            click.echo(f"UKSSDC base URL: {settings.ukssdc_base_url}")
            if settings.ukssdc_base_url.rstrip("/") == PRODUCTION_BASE_URL:
                warn_production_target(settings.ukssdc_base_url, record.user_id)
        click.echo(f"Token for {record.user_id} (shown once): {token}")
        running.enter_context(EmbeddedWorker(runtime))
        running.enter_context(CommandStreamConsumer(runtime, "embedded").running())
        server = make_server(host, port, app, threaded=True)
        click.echo(f"API listening on http://{host}:{server.server_port}")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="Worker slots (default from settings).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True)
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, pool: str) -> None:
    """Run a Celery worker (needs REDIS_URL); extra arguments go to `celery worker`."""
    settings = load_settings()
    if settings.embedded:
        raise click.UsageError("a stand-alone worker needs REDIS_URL (and optionally CELERY_BROKER_URL)")
    from ukcancel.assemble import create_runtime
    from ukcancel.cli.startup import prepare_store
    from ukcancel.failover import MasterWatch
    from ukcancel.worker import logs as worker_logs
    from ukcancel.worker.celery_app import QUEUES
    from ukcancel.worker.tasks import celery_of

    worker_logs.install(settings)
    runtime = create_runtime(settings)
    prepare_store(runtime.connection)
    if settings.sentinel:  # a new Redis master pauses the fleet before this process takes a permit from it
        MasterWatch(runtime.connection, runtime.gate, settings.fleet_guard_seconds).attach().check()
    argv = ["worker", "--loglevel=INFO", f"--queues={','.join(QUEUES)}", f"--pool={pool}",
            f"--concurrency={concurrency or settings.worker_concurrency}", "--without-gossip", "--without-mingle",
            *ctx.args]
    celery_of(runtime).worker_main(argv)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--jobs", "jobs_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON job table to load instead of the seeded one.")
@click.option("--latency-ms", default=0.0, show_default=True, type=click.FloatRange(0, 60000),
              help="Latency added to every reply.")
def simulator(host: str, port: int, jobs_path: str | None, latency_ms: float) -> None:
    """Serve the UKSSDC simulator (canceljob.php, checkProductStatus.php, listOldJobs.php, getNumJobs.php)."""
    from ukcancel.simulator import serve_forever

    serve_forever(host, port, jobs_path=jobs_path, latency_ms=latency_ms)


def _attach_subcommands() -> None:
    from ukcancel.cli import commands, fleet, jobs, run, stream, tokens

    main.add_command(tokens.token)
    main.add_command(fleet.fleet)
    for command in (commands.cancel, commands.batch, commands.status, commands.list_commands, commands.withdraw):
        main.add_command(command)
    main.add_command(stream.stream_consumer)
    main.add_command(run.run)
    main.add_command(jobs.jobs)
    main.add_command(jobs.plan)


_attach_subcommands()
