"""Refreshing a user's cached jobs (`ukcancel.jobs`): the task behind `GET /v1/jobs` and plans.

Like the `all_active` expansion (whose listing and gated call it shares), every UKSSDC call
takes a fleet permit; no permit means the task is rescheduled, not that it waits in a slot. It
lists the user's jobs (listOldJobs.php) when the listing is older than the status TTL, then
reads checkProductStatus.php for each job whose states are older than that TTL and not final.
What it read is saved after every call, so a rescheduled or redelivered task carries on where
it stopped. When it ends, the refresh is announced and the plans waiting for it are computed.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from ukcancel import plans
from ukcancel import products as product_names
from ukcancel.fleet import FleetGate
from ukcancel.jobs import listed_jobs
from ukcancel.retry import Rand, Reschedule, backoff_delay
from ukcancel.worker.all_active import asked_about, gated_call, keep_status
from ukcancel.worker.base_task import ServiceTask, service_task
from ukcancel.worker.ukssdc import ServerError, UkssdcClient, UkssdcFailure

if TYPE_CHECKING:
    from celery import Celery

    from ukcancel.runtime import Runtime

log = logging.getLogger(__name__)

REFRESH_JOBS = "ukcancel.refresh_jobs"


class FailedAttempt(Reschedule):
    """A transient UKSSDC failure: try again later, counting an attempt (a refused permit does not)."""


class JobsRefresh:
    """One execution of the refresh task for one user; may raise `Reschedule`."""

    def __init__(self, runtime: Runtime, user_id: str, gate: FleetGate, client: UkssdcClient,
                 rand: Rand = random.uniform) -> None:
        self.runtime = runtime
        self.cache = runtime.jobs
        self.user_id = user_id
        self.gate = gate
        self.client = client
        self.rand = rand

    def run(self, attempt: int = 1) -> int:
        """Jobs whose states were read; the refresh is finished (announced) unless rescheduled."""
        self.cache.keep_refreshing(self.user_id)
        try:
            listing = self.cache.listing(self.user_id)
            if self.cache.listing_stale(listing):
                listed = gated_call(self.gate, self.rand, self.client.old_jobs, self.user_id)
                if isinstance(listed, ServerError):
                    self._finish(f"the UKSSDC would not list the jobs of {self.user_id}: {listed.message}")
                    return 0
                self.cache.save_listing(self.user_id, listed_jobs(listed))
                listing = self.cache.listing(self.user_id)
            elif listing is not None and listing.error:
                self._finish(listing.error)  # refused within the TTL: not asked again yet
                return 0
            read = 0
            for job in self.cache.stale_jobs(self.user_id, listing):
                if not self.cache.needs_reading(self.user_id, job.job_id):
                    continue  # read by another refresh of the same user since this one began
                # listOldJobs.php flags no SourceDet: asked of every job, shown only where it exists
                shorts = product_names.short_names(asked_about(job))
                status = gated_call(self.gate, self.rand, self.client.product_status, self.user_id, job.job_id, shorts)
                keep_status(self.cache, self.user_id, job.job_id, status)
                self.cache.keep_refreshing(self.user_id)
                read += 1
        except UkssdcFailure as failure:
            settings = self.runtime.settings
            if not failure.transient or attempt >= settings.max_attempts:
                self._finish(f"reading the jobs failed after {attempt} attempts: {failure}")
                return 0
            delay = backoff_delay(attempt, settings.retry_base_seconds, settings.retry_max_delay_seconds,
                                  failure.retry_after, self.rand)
            raise FailedAttempt(delay, str(failure)) from None
        self._finish(None)
        log.info("jobs of %s refreshed: %d read", self.user_id, read)
        return read

    def _finish(self, error: str | None) -> None:
        self.cache.finish_refresh(self.user_id, error)
        plans.settle_waiting(self.runtime, self.user_id, error)


def register_jobs_tasks(app: Celery) -> None:
    """Register the refresh task on the service's Celery app (called by `create_celery`)."""

    @service_task(app, REFRESH_JOBS, max_retries=None)
    def refresh_jobs(self: ServiceTask, user_id: str, attempt: int = 1) -> int:
        try:
            return JobsRefresh(self.runtime, user_id, self.gate, self.ukssdc).run(attempt)
        except Reschedule as later:
            log.info("refresh of %s's jobs rescheduled in %.2f s: %s", user_id, later.countdown, later.reason)
            self.runtime.jobs.keep_refreshing(user_id)
            next_attempt = attempt + 1 if isinstance(later, FailedAttempt) else attempt
            raise self.retry(args=[user_id, next_attempt], countdown=later.countdown,
                             max_retries=None) from None
        except Exception as exc:  # a defect must not leave the refresh flagged (and plans computing) for ever
            log.exception("internal error refreshing the jobs of %s", user_id)
            self.runtime.jobs.finish_refresh(user_id, f"internal error in the worker: {type(exc).__name__}")
            plans.settle_waiting(self.runtime, user_id, f"internal error in the worker: {type(exc).__name__}")
            return 0
