"""Expanding an ``all_active`` batch: the user's products still being built, as cancel commands.

A worker asks the UKSSDC, through the fleet gate like every other call (a permit per call; no
permit means the task is rescheduled, not that it waits in a worker slot): listOldJobs.php for
the user's jobs (once, shared with any "all" command of the user asking at the same time), then
checkProductStatus.php for each job's products (a few at a time, each under its own permit),
unless the job cache holds states read within `job_status_ttl_seconds` (or final ones): those
are reused, and what is read is kept there. Every product in state 1,
2, 3 or 5 (requested, queued, running, waiting for the position) goes into one cancel command
per job, naming exactly those products. The commands are enqueued as the batch's items in one
pipeline, and the batch becomes `running`.

What was learned is written to the batch record after every call, so a task that is
rescheduled (no permit, a transient failure) or redelivered (worker killed) carries on where
it stopped rather than asking the UKSSDC again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from ukcancel import products as product_names
from ukcancel.batch import EXPANDING
from ukcancel.codes import ACTIVE_STATES
from ukcancel.command import CancelCommand
from ukcancel.fleet import FleetGate
from ukcancel.jobs import JobCache, ListedJob
from ukcancel.retry import Rand, Reschedule, backoff_delay
from ukcancel.worker.base_task import ServiceTask, service_task
from ukcancel.worker.listing_resolver import ListingResolver
from ukcancel.worker.ukssdc import ServerError, UkssdcClient, UkssdcFailure

if TYPE_CHECKING:
    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

EXPAND_ALL_ACTIVE = "ukcancel.expand_all_active"
# Status checks an expansion has under way at once (each under its own fleet permit).
EXPANSION_THREADS = 4


class ActiveJobsExpansion:
    """One execution of the expansion task for one batch; may raise `Reschedule`."""

    def __init__(
        self,
        runtime: Runtime,
        batch_id: str,
        gate: FleetGate,
        client: UkssdcClient,
        rand: Rand = random.uniform,
    ) -> None:
        self.runtime = runtime
        self.batches = runtime.batches
        self.settings = runtime.settings
        self.batch_id = batch_id
        self.gate = gate
        self.client = client
        self.rand = rand

    def run(self) -> int | None:
        """Commands enqueued, or None when there was nothing (more) to do or the batch failed."""
        batch = self.batches.get(self.batch_id)
        if batch is None or batch.state != EXPANDING:
            return None  # expired, or finished by an earlier delivery of this task
        progress = self.batches.expansion_progress(self.batch_id)
        try:
            jobs = progress["jobs"]
            if jobs is None:
                jobs = self._list_jobs(batch.user_id, batch.created_at)
                if jobs is None:
                    return None
            found: dict[str, list[str]] = progress["found"]
            self._read_states(batch.user_id, jobs, found)
        except UkssdcFailure as failure:
            return self._retry_or_fail(failure, progress["attempts"] + 1)
        commands = [
            CancelCommand(job_id=int(job_id), user_id=batch.user_id, products=products, submitted_by=batch.submitted_by)
            for job_id, products in found.items()
        ]
        # At most once per batch, though the reconciler may have sent a second expansion: the batch
        # record is watched, so a finish (or any progress) by another run in between aborts this one.
        with self.runtime.connection.pipeline(transaction=True) as pipe:
            if not self.batches.watch_expanding(self.batch_id, pipe):
                return None
            self.batches.finish_expansion(self.batch_id, commands, pipe)
            staged = self.runtime.schedule.stage(commands, pipe)
            try:
                results = pipe.execute()
            except redis.WatchError:
                log.info("batch %s: another expansion got there first", self.batch_id)
                return None
        staged.send_turns(results)
        log.info("batch %s: %d jobs with active products", self.batch_id, len(commands))
        return len(commands)

    def _list_jobs(self, user_id: str, since: float) -> dict[str, list[str]] | None:
        """Job id -> short names to ask about, newest job first; None when the UKSSDC refused.

        From a listing taken after the batch was made (one another worker fetched meanwhile, or
        fetched now: `ListingResolver`, which also keeps it for "all" commands and `GET /v1/jobs`).
        """
        listings = ListingResolver(self.runtime.jobs, self.client, self._call, self.settings)
        listed = listings.jobs(user_id, since)
        if isinstance(listed, ServerError):
            self.batches.fail(self.batch_id, f"the UKSSDC would not list the jobs of {user_id}: {listed.message}")
            return None
        jobs = {str(job.job_id): product_names.short_names(asked_about(job)) for job in listed}
        self.batches.save_expansion_progress(self.batch_id, jobs=jobs)
        return jobs

    def _read_states(self, user_id: str, jobs: dict[str, list[str]], found: dict[str, list[str]]) -> None:
        """Each job's active products into `found`, `EXPANSION_THREADS` status checks at a time.

        Each check takes its own permit, so the fleet's rate and in-flight cap still hold; one at a
        time, the expansion would be slower than the rate (each call waits for its reply). Results
        are taken in listing order and the progress saved after each; on the first failure the
        checks not yet started are dropped and it is raised. A check that finished meanwhile is
        not lost: its states are in the job cache, reused by the next run within the TTL.
        """
        pending = list(jobs.items())
        if not pending:
            return
        with ThreadPoolExecutor(max_workers=min(EXPANSION_THREADS, len(pending)),
                                thread_name_prefix="ukcancel-expand") as pool:
            futures = [pool.submit(self._active_products, user_id, int(job_id), shorts) for job_id, shorts in pending]
            try:
                for (job_id, _), future in zip(pending, futures):
                    active = future.result()
                    if active:
                        found[job_id] = active
                    del jobs[job_id]
                    self.batches.save_expansion_progress(self.batch_id, jobs=jobs, found=found)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _active_products(self, user_id: str, job_id: int, shorts: list[str]) -> list[str]:
        """Long names of the job's products that can still be cancelled.

        States read within the status TTL (by a jobs refresh or another expansion), or final, are
        reused from the job cache; otherwise checkProductStatus.php is asked and what it said is kept there.
        """
        cache = self.runtime.jobs
        cached = cache.states(user_id, [job_id]).get(job_id)
        if cached is not None and cached.error is None and cache.states_current(cached):
            codes = {product_names.LONG_TO_SHORT[name]: code for name, (code, _) in cached.states.items()
                     if name in product_names.LONG_TO_SHORT}
        else:
            status = self._call(self.client.product_status, user_id, job_id, shorts)
            keep_status(cache, user_id, job_id, status)
            if isinstance(status, ServerError):
                log.warning("batch %s: status of job %s refused: %s", self.batch_id, job_id, status.message)
                return []
            codes = {short: code for short, (code, _) in status.items()}
        return [product_names.SHORT_TO_LONG[short] for short in shorts if codes.get(short) in ACTIVE_STATES]

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return gated_call(self.gate, self.rand, fn, *args)

    def _retry_or_fail(self, failure: UkssdcFailure, attempt: int) -> None:
        if not failure.transient or attempt >= self.settings.max_attempts:
            self.batches.fail(self.batch_id, f"finding the active jobs failed after {attempt} attempts: {failure}")
            return None
        self.batches.save_expansion_progress(self.batch_id, attempts=attempt)
        delay = backoff_delay(
            attempt, self.settings.retry_base_seconds, self.settings.retry_max_delay_seconds, failure.retry_after,
            self.rand,
        )
        raise Reschedule(delay, str(failure))


def keep_status(cache: JobCache, user_id: str, job_id: int, status: dict[str, tuple[int, str]] | ServerError) -> None:
    """What checkProductStatus.php answered about a job (short name -> (code, text), or a refusal),
    kept in the job cache for `GET /v1/jobs`, plans, and expansions within the status TTL."""
    if isinstance(status, ServerError):
        cache.save_states(user_id, job_id, {}, error=status.message or "refused")
    else:
        cache.save_states(user_id, job_id, {product_names.SHORT_TO_LONG[short]: pair for short, pair in status.items()})


def asked_about(job: ListedJob) -> list[str]:
    """Long names to ask checkProductStatus.php about: those listed, and those listOldJobs.php cannot flag."""
    return [*job.products, *product_names.never_flagged(job.products)]


def gated_call(gate: FleetGate, rand: Rand, fn: Callable[..., Any], *args: Any) -> Any:
    """One UKSSDC call under a fleet permit (no permit in time: `Reschedule`, freeing the slot)."""
    with gate.permit(rand=rand):
        return fn(*args)


def register_all_active(app: Celery) -> None:
    """Register the expansion task on the service's Celery app (called by `create_celery`)."""

    @service_task(app, EXPAND_ALL_ACTIVE, max_retries=None)
    def expand_all_active(self: ServiceTask, batch_id: str) -> int | None:
        try:
            return ActiveJobsExpansion(self.runtime, batch_id, self.gate, self.ukssdc).run()
        except Reschedule as later:
            log.info("expansion of batch %s rescheduled in %.2f s: %s", batch_id, later.countdown, later.reason)
            self.runtime.batches.expect_expansion(batch_id, later.countdown)
            raise self.retry(countdown=later.countdown, max_retries=None) from None
        except Exception as exc:  # a defect must not leave the batch expanding for ever
            log.exception("internal error expanding batch %s", batch_id)
            self.runtime.batches.fail(batch_id, f"internal error in the worker: {type(exc).__name__}")
            return None
