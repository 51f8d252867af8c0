"""Resolving a cancel command's "all" from the user's cached job listing: one listOldJobs.php per user per TTL.

"all" means every product the job asked for, which only listOldJobs.php (the user's whole job
list) tells. Rather than one listing per command, a command reads the listing the job cache
keeps (`ukcancel.jobs.JobCache`, also what `GET /v1/jobs` shows) when it is younger than
`job_status_ttl_seconds`. Otherwise one worker asks the UKSSDC (single flight: it holds the
lease ``ukcancel:jobs:{user}:listing``; every other command of that user waits for its listing on
the user's jobs channel instead of asking too), saves the listing, and announces it.

A job the cached listing does not show is asked for once: if the listing is older than the
command (the job may be newer than it), a fresh one is fetched; a job that listing does not
show either goes the "unlisted" way (`resolution`). A refusal (`OK: 0`) is cached for the TTL too,
so the commands of an unknown user all end with the same status 0 after one call.

An `all_active` expansion takes its listing here too (`jobs`), from one taken after the batch
was made, so the commands of the user and the expansion share it.

The call goes through the `call` given (under a fleet permit: the run's `_call`, the
expansion's `gated_call`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from ukcancel import products as product_names
from ukcancel.jobs import JobCache, ListedJob, Listing, find_job, listed_jobs
from ukcancel.settings import Settings
from ukcancel.worker.ukssdc import ServerError, UkssdcClient

log = logging.getLogger(__name__)

# How many times a command looks again after waiting for another worker's listing, before it
# asks the UKSSDC itself (that worker died, or its listing was unusable).
WAIT_ROUNDS = 3


def resolution(job: ListedJob | None) -> tuple[list[str], bool]:
    """(short names to cancel, unlisted) for "all" on `job` as listOldJobs.php listed it (None: not listed).

    A job listed with no product flagged, or not listed, asks for every product and later drops
    the code-2 ("no such product") entries. listOldJobs.php has no SourceDet flag: a job without one
    is asked for SourceDet too, its code 2 dropped if the job has none.
    """
    asked = list(job.products) if job is not None else []
    unlisted = not asked
    resolved = list(product_names.SHORT_TO_LONG) if unlisted else product_names.short_names(asked)
    if job is not None and not unlisted:
        never_flagged = product_names.never_flagged(job.flags or ())
        if never_flagged:  # asked for too, their code 2 dropped if the job has none
            resolved.extend(product_names.short_names(never_flagged))
            unlisted = True
    return resolved, unlisted


class ListingResolver:
    """A user's job listing (one job of it for "all", every job for all_active), asking the UKSSDC
    at most once per user per TTL and once however many ask at the same time."""

    def __init__(
        self,
        cache: JobCache,
        client: UkssdcClient,
        call: Callable[..., Any],
        settings: Settings,
        holder: str | None = None,
    ) -> None:
        self.cache = cache
        self.connection = cache.connection
        self.client = client
        self.call = call
        self.holder = holder or uuid.uuid4().hex
        # As long as a permit's lease: one call, its connect and read timeouts, and a margin.
        self.lease_seconds = settings.ukssdc_connect_timeout_seconds + settings.ukssdc_timeout_seconds + 5

    def job(self, user_id: str, job_id: int, since: float) -> ListedJob | None | ServerError:
        """The job as listed, None if a listing taken after `since` (or fetched for it) does not show it,
        or the UKSSDC's refusal to list the user's jobs. A fresh listing taken before `since` serves
        if it shows the job (or holds a refusal)."""
        return _find(self._listed(user_id, lambda listing, fetched: (
            fetched or listing.refused is not None or listing.find(job_id) is not None
            or _taken_since(listing, since))), job_id)

    def jobs(self, user_id: str, since: float) -> list[ListedJob] | ServerError:
        """Every job of the user, from a listing taken after `since` (or fetched now), or the refusal."""
        return self._listed(user_id, lambda listing, fetched: fetched or _taken_since(listing, since))

    def _listed(self, user_id: str, serves: Callable[[Listing, bool], bool]) -> list[ListedJob] | ServerError:
        """The user's jobs from the cached listing when it is usable and `serves` (the listing, and
        whether this call already waited for a fetch); else fetched under the lease, or waited for
        while another worker fetches it, single flight."""
        fetched = False
        for _ in range(WAIT_ROUNDS):
            listing = self._cached(user_id)
            if listing is not None and self._usable(listing) and serves(listing, fetched):
                return ServerError(listing.refused) if listing.refused is not None else listing.jobs
            if self._take_lease(user_id):
                return self._fetch(user_id)
            self._wait_for_listing(user_id)
            fetched = True
        return self._fetch(user_id, leased=False)  # the other worker gave no listing

    def _cached(self, user_id: str) -> Listing | None:
        return self.cache.current_listing(user_id)

    def _usable(self, listing: Listing | None) -> bool:
        """Younger than the TTL, not an error of a refresh, and recording each row's flags."""
        if self.cache.listing_stale(listing):
            return False
        assert listing is not None
        if listing.error and listing.refused is None:
            return False  # a refresh gave up (transient failures): that says nothing of the jobs
        return all(job.flags is not None for job in listing.jobs)

    def _take_lease(self, user_id: str) -> bool:
        return self.cache.take_listing_lease(user_id, self.holder, self.lease_seconds)

    def _fetch(self, user_id: str, leased: bool = True) -> list[ListedJob] | ServerError:
        try:
            rows = self.call(self.client.old_jobs, user_id)
            if isinstance(rows, ServerError):
                self.cache.save_refusal(user_id, rows.message)
                return rows
            jobs = listed_jobs(rows)
            self.cache.save_listing(user_id, jobs)
            return jobs
        finally:
            if leased:
                self.cache.release_listing_lease(user_id, self.holder)

    def _wait_for_listing(self, user_id: str) -> None:
        """Until the worker holding the lease has saved its listing (or given up), at most a lease."""
        with self.cache.watching_jobs(user_id) as waiter:
            deadline = time.monotonic() + self.lease_seconds
            while self.cache.listing_lease_held(user_id):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or waiter.wait(remaining) is None:
                    log.warning("no listing of %s's jobs came from the worker asking for it", user_id)
                    return


def _taken_since(listing: Listing, since: float) -> bool:
    return listing.listed_at is not None and listing.listed_at >= since


def _find(jobs: list[ListedJob] | ServerError, job_id: int) -> ListedJob | None | ServerError:
    if isinstance(jobs, ServerError):
        return jobs
    return find_job(jobs, job_id)
