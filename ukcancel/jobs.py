"""A user's UKSSDC jobs and their products' states, as last read, cached in Redis.

The API never calls the UKSSDC: it shows what is cached here and asks a worker to refresh it
(`request_refresh`, one refresh task per user at a time). The worker lists the user's jobs
(listOldJobs.php) and reads the state of each job's products (checkProductStatus.php) under
the fleet gate, but only for a job whose states are older than `job_status_ttl_seconds` (the
UKSSDC asks for no more than one status poll per job every ~10 s), and never again for a job
whose products have all reached a final state (complete, failed or cancelled: states never
change after that). When a refresh ends it is announced on the user's channel, so a long poll
(`wait_refreshed`) wakes up without polling.

`JobSelection` is the one filter of jobs and products, used by `GET /v1/jobs` and by plans
(`ukcancel.plans`).
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis

from ukcancel import keys
from ukcancel import products as product_names
from ukcancel.codes import ACTIVE_STATES, CANCELLED_STATES, FINAL_STATES, FINISHED_STATES, ProductState
from ukcancel.events import EventListener
from ukcancel.store import as_text, as_text_dict, delete_if_held

Clock = Callable[[], float]

# checkProductStatus.php's state codes (`ukcancel.codes`) and what they mean.
STATE_TEXTS: dict[int, str] = {
    ProductState.CANCELLED_BY_USER: "Cancelled by the user",
    ProductState.BUILT_NOTHING: "Ran, but built nothing",
    ProductState.FAILED_INTERNAL: "Failed (internal error)",
    ProductState.FAILED_TO_START: "Failed (internal error)",
    ProductState.REQUESTED: "Requested, not yet queued",
    ProductState.QUEUED: "Queued",
    ProductState.RUNNING: "Running",
    ProductState.COMPLETED: "Completed",
    ProductState.WAITING_FOR_POSITION: "Waiting for the standard position",
}
# The `state` filter: a name -> the product states it selects.
STATE_FILTERS: dict[str, frozenset[int]] = {
    "active": ACTIVE_STATES,
    "finished": FINISHED_STATES,
    "cancelled": CANCELLED_STATES,
}
# How long a refresh may go without a sign of life before another may be asked for.
REFRESH_LEASE_SECONDS = 120
# How long the cache is kept at all (a stale view is still shown, with its age).
CACHE_KEEP_SECONDS = 24 * 3600
REFRESHED = "refreshed"
PARSED_USERS = 64  # listings a process keeps parsed (`JobCache.current_listing`)
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def state_text(code: int | None) -> str | None:
    if code is None:
        return None
    return STATE_TEXTS.get(code, f"Unknown state {code}")


def parse_submitted(raw: Any) -> float | None:
    """DateSubmitted ("2026-11-20 10:15:00", read as UTC) as epoch seconds; None if unreadable."""
    if not isinstance(raw, str):
        return None
    for pattern in (DATE_FORMAT, "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(raw.strip(), pattern).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class ListedJob:
    """A job as listOldJobs.php lists it: the products it asked for are long names."""

    job_id: int
    name: str
    submitted: str | None  # as the UKSSDC wrote it
    submitted_at: float | None  # the same, epoch seconds (UTC)
    products: tuple[str, ...]
    # The long names the row carried a flag for at all (true or not); None when not recorded (a
    # listing cached before this was kept). "all" tells a missing SourceDet flag from a false one.
    flags: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"job_id": self.job_id, "name": self.name, "submitted": self.submitted, "products": list(self.products)}
        if self.flags is not None:
            out["flags"] = list(self.flags)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ListedJob:
        flags = raw.get("flags")
        return cls(raw["job_id"], raw.get("name") or "", raw.get("submitted"), parse_submitted(raw.get("submitted")),
                   tuple(raw.get("products") or ()), tuple(flags) if flags is not None else None)


@dataclass(frozen=True)
class JobStates:
    """What checkProductStatus.php said about one job: long name -> (code, text); or its error."""

    states: dict[str, tuple[int, str]]
    read_at: float
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.error is None and bool(self.states) and all(code in FINAL_STATES for code, _ in self.states.values())


@dataclass(frozen=True)
class JobView:
    job: ListedJob
    states: JobStates | None  # None: not read yet

    def product_rows(self) -> list[dict[str, Any]]:
        """Each product the job asked for (plus any the status reply named), with its state."""
        seen = list(self.job.products)
        if self.states is not None:
            seen += [name for name in self.states.states if name not in seen]
        rows = []
        for name in seen:
            code, text = self.states.states.get(name, (None, None)) if self.states else (None, None)
            rows.append({"name": name, "state": code, "state_text": text if text else state_text(code)})
        return rows


@dataclass(frozen=True)
class JobSelection:
    """Which jobs and products: every given criterion must hold (None = not filtered)."""

    name: str | None = None  # a glob, fnmatch style, case-insensitive: "GRB 26*"
    submitted_after: float | None = None  # epoch seconds
    submitted_before: float | None = None
    products: tuple[str, ...] | None = None  # long names
    state: str | None = None  # a key of STATE_FILTERS
    job_ids: tuple[int, ...] | None = None

    @classmethod
    def from_query(cls, query: dict[str, Any]) -> JobSelection:
        """From a loaded `JobFilterSchema` (datetimes, long names, a list of ids)."""
        after, before = query.get("submitted_after"), query.get("submitted_before")
        products, job_ids = query.get("products"), query.get("job_ids")
        return cls(
            name=query.get("name"),
            submitted_after=after.timestamp() if isinstance(after, datetime) else after,
            submitted_before=before.timestamp() if isinstance(before, datetime) else before,
            products=tuple(products) if products else None,
            state=query.get("state"),
            job_ids=tuple(job_ids) if job_ids else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "submitted_after": _iso(self.submitted_after),
            "submitted_before": _iso(self.submitted_before),
            "products": list(self.products) if self.products is not None else None,
            "state": self.state,
            "job_ids": list(self.job_ids) if self.job_ids is not None else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobSelection:
        return cls(
            name=raw.get("name"),
            submitted_after=_epoch(raw.get("submitted_after")),
            submitted_before=_epoch(raw.get("submitted_before")),
            products=tuple(raw["products"]) if raw.get("products") is not None else None,
            state=raw.get("state"),
            job_ids=tuple(raw["job_ids"]) if raw.get("job_ids") is not None else None,
        )

    def job_left_out(self, job: ListedJob) -> str | None:
        """Why the job itself is not selected (its name, date or id), or None."""
        if self.job_ids is not None and job.job_id not in self.job_ids:
            return "not one of the job ids asked for"
        if self.name is not None and not fnmatch.fnmatchcase(job.name.casefold(), self.name.casefold()):
            return f"name does not match {self.name!r}"
        if self.submitted_after is not None or self.submitted_before is not None:
            if job.submitted_at is None:
                return "submission date unknown"
            if self.submitted_after is not None and job.submitted_at < self.submitted_after:
                return f"submitted before {_iso(self.submitted_after)}"
            if self.submitted_before is not None and job.submitted_at >= self.submitted_before:
                return f"submitted at or after {_iso(self.submitted_before)}"
        if self.products is not None and not set(self.products) & set(job.products):
            return "asked for none of " + ", ".join(self.products)
        return None

    def products_of(self, view: JobView, states: frozenset[int] | None = None) -> list[dict[str, Any]]:
        """The job's product rows this selection keeps (its product names, its state; and `states`)."""
        wanted = STATE_FILTERS[self.state] if self.state else None
        rows = []
        for row in view.product_rows():
            if self.products is not None and row["name"] not in self.products:
                continue
            if wanted is not None and row["state"] not in wanted:
                continue
            if states is not None and row["state"] not in states:
                continue
            rows.append(row)
        return rows


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def _epoch(iso: str | None) -> float | None:
    if iso is None:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def listed_jobs(listed: Iterable[dict[str, Any]], also_ask: Sequence[str] = ()) -> list[ListedJob]:
    """listOldJobs.php's rows as `ListedJob`s (rows without a usable JobID are skipped).

    `also_ask`: long names listOldJobs.php has no flag for, asked about for every job.
    """
    jobs = []
    for row in listed:
        try:
            job_id = int(row.get("JobID"))
        except (TypeError, ValueError):
            continue
        asked = tuple(long for long in product_names.LONG_TO_SHORT if row.get(long) is True or long in also_ask)
        flags = tuple(long for long in product_names.LONG_TO_SHORT if long in row)
        submitted = row.get("DateSubmitted")
        jobs.append(ListedJob(job_id, str(row.get("Name") or ""), submitted if isinstance(submitted, str) else None,
                              parse_submitted(submitted), asked, flags))
    return jobs


@dataclass(frozen=True)
class Listing:
    jobs: list[ListedJob]
    listed_at: float | None
    error: str | None  # the UKSSDC would not list the jobs (OK 0), or the refresh gave up
    refreshed_at: float | None
    refused: str | None = None  # listOldJobs.php's own ERROR text when it answered OK 0 (`save_refusal`)

    def find(self, job_id: int) -> ListedJob | None:
        """The job as listed (the first row with its id), or None if the listing does not show it."""
        return find_job(self.jobs, job_id)


def find_job(jobs: Iterable[ListedJob], job_id: int) -> ListedJob | None:
    """The first of `jobs` with this id, or None."""
    return next((job for job in jobs if job.job_id == job_id), None)


LISTED = "listed"  # published on the user's jobs channel when a listing lease ends


class JobCache:
    """The cached jobs of each user and the refresh requests.

    Redis keys owned (see `ukcancel.keys`): ``ukcancel:jobs:{user}``, ``ukcancel:jobs:{user}:job:{id}``,
    ``ukcancel:jobs:{user}:refresh``, ``ukcancel:jobs:{user}:listing`` (the lease of the one worker
    asking the UKSSDC for a user's listing) and the channel ``ukcancel:events:jobs:{user}``.
    """

    def __init__(
        self, connection: redis.Redis, fresh_seconds: float, clock: Clock = time.time, events: EventListener | None = None
    ) -> None:
        self.connection = connection
        # How long a listing or a job's states count as fresh (`UKCANCEL_JOB_STATUS_TTL_SECONDS`): a
        # staleness bound, not a Redis expiry (those are `CACHE_KEEP_SECONDS`).
        self.fresh_seconds = fresh_seconds
        self.clock = clock
        self.events = events if events is not None else EventListener(connection)
        # Listings parsed by this process, by user: (listed_at, error, refused as stored, the listing).
        self._parsed: dict[str, tuple[tuple[Any, ...], Listing]] = {}

    # -- the one worker asking for a user's listing (single flight) ------------------------------
    def take_listing_lease(self, user_id: str, holder: str, seconds: float) -> bool:
        """`holder` is the one to ask the UKSSDC for the user's listing, for `seconds` at most."""
        return bool(self.connection.set(keys.jobs_listing(user_id), holder, nx=True, ex=max(1, round(seconds))))

    def release_listing_lease(self, user_id: str, holder: str) -> None:
        """`holder` is done (its listing saved, or given up): tell the workers waiting for it."""
        delete_if_held(self.connection, keys.jobs_listing(user_id), holder)
        self.connection.publish(keys.jobs_events(user_id), LISTED)

    def listing_lease_held(self, user_id: str) -> bool:
        return bool(self.connection.exists(keys.jobs_listing(user_id)))

    def watching_jobs(self, user_id: str) -> Any:
        """The user's jobs channel, watched (a context manager giving a waiter; see `EventListener`)."""
        return self.events.watching(keys.jobs_events(user_id))

    # -- reading ------------------------------------------------------------------------------
    def current_listing(self, user_id: str) -> Listing | None:
        """`listing`, parsed again only when it changed since this process last parsed it.

        A listing is one JSON document of every job of the user, and every "all" command of a
        batch reads it: one small HMGET tells whether the copy parsed before is still the one stored.
        """
        head = tuple(self.connection.hmget(keys.jobs(user_id), "listed_at", "error", "refused"))
        known = self._parsed.get(user_id)
        if head[0] is not None and known is not None and known[0] == head:
            return known[1]
        listing = self.listing(user_id)
        if listing is not None and head[0] is not None:
            if len(self._parsed) >= PARSED_USERS:
                self._parsed.clear()
            # Read after `head`: had it changed in between, the next look sees a new head and parses again.
            self._parsed[user_id] = (head, listing)
        return listing

    def listing(self, user_id: str) -> Listing | None:
        raw = as_text_dict(self.connection.hgetall(keys.jobs(user_id)))
        if not raw:
            return None
        return Listing(
            jobs=[ListedJob.from_json(job) for job in json.loads(raw.get("jobs") or "[]")],
            listed_at=float(raw["listed_at"]) if raw.get("listed_at") else None,
            error=raw.get("error") or None,
            refreshed_at=float(raw["refreshed_at"]) if raw.get("refreshed_at") else None,
            refused=raw.get("refused") if raw.get("error") and "refused" in raw else None,
        )

    def states(self, user_id: str, job_ids: Sequence[int]) -> dict[int, JobStates]:
        pipe = self.connection.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job_states(user_id, job_id), "states", "read_at", "error")
        found: dict[int, JobStates] = {}
        for job_id, (states, read_at, error) in zip(job_ids, pipe.execute()):
            if read_at is None:
                continue
            decoded = json.loads(as_text(states)) if states else {}
            found[job_id] = JobStates(
                {name: (int(code), text) for name, (code, text) in decoded.items()},
                float(as_text(read_at)),
                as_text(error) if error else None,
            )
        return found

    def views(self, user_id: str) -> tuple[Listing | None, list[JobView]]:
        listing = self.listing(user_id)
        if listing is None:
            return None, []
        states = self.states(user_id, [job.job_id for job in listing.jobs])
        return listing, [JobView(job, states.get(job.job_id)) for job in listing.jobs]

    def listing_stale(self, listing: Listing | None) -> bool:
        return listing is None or listing.listed_at is None or self.clock() - listing.listed_at >= self.fresh_seconds

    def states_current(self, states: JobStates | None, now: float | None = None) -> bool:
        """States that need not be read again: final, or read within `fresh_seconds`."""
        if states is None:
            return False
        return states.final or (self.clock() if now is None else now) - states.read_at < self.fresh_seconds

    def stale_jobs(self, user_id: str, listing: Listing) -> list[ListedJob]:
        """The listed jobs whose states must be read again: never read, read too long ago, not final."""
        states = self.states(user_id, [job.job_id for job in listing.jobs])
        now = self.clock()
        return [job for job in listing.jobs if not self.states_current(states.get(job.job_id), now)]

    def needs_reading(self, user_id: str, job_id: int) -> bool:
        """Checked again just before a call: another refresh may have read the job meanwhile."""
        return not self.states_current(self.states(user_id, [job_id]).get(job_id))

    def fresh(self, user_id: str) -> bool:
        """Everything shown is recent enough: the listing, and every job that can still change."""
        return self.fresh_views(*self.views(user_id))

    def fresh_views(self, listing: Listing | None, views: Sequence[JobView]) -> bool:
        """`fresh`, judged on views already read (`views`) instead of reading them again."""
        if listing is None or self.listing_stale(listing):
            return False
        now = self.clock()
        return all(self.states_current(view.states, now) for view in views)

    def refreshing(self, user_id: str) -> bool:
        return bool(self.connection.exists(keys.jobs_refresh(user_id)))

    # -- writing (the worker) -------------------------------------------------------------------
    def save_listing(self, user_id: str, jobs: Sequence[ListedJob]) -> None:
        key = keys.jobs(user_id)
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(key, mapping={"jobs": json.dumps([job.to_json() for job in jobs]), "listed_at": repr(self.clock())})
        pipe.hdel(key, "error", "refused")
        pipe.expire(key, CACHE_KEEP_SECONDS)
        pipe.execute()

    def save_refusal(self, user_id: str, message: str) -> None:
        """listOldJobs.php answered OK 0 with `message`: not asked again before the TTL is over.

        The jobs listed before (if any) stay shown, with the error, as after a refused refresh.
        """
        key = keys.jobs(user_id)
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(key, mapping={"error": f"the UKSSDC would not list the jobs of {user_id}: {message}",
                                "refused": message, "listed_at": repr(self.clock())})
        pipe.expire(key, CACHE_KEEP_SECONDS)
        pipe.execute()

    def save_states(self, user_id: str, job_id: int, states: dict[str, tuple[int, str]], error: str | None = None) -> None:
        key = keys.job_states(user_id, job_id)
        mapping = {"states": json.dumps({name: list(pair) for name, pair in states.items()}), "read_at": repr(self.clock())}
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(key, mapping={**mapping, "error": error or ""})
        pipe.expire(key, CACHE_KEEP_SECONDS)
        pipe.execute()

    def keep_refreshing(self, user_id: str) -> None:
        """A sign of life of the refresh under way (its request stays deduplicated)."""
        self.connection.set(keys.jobs_refresh(user_id), "1", ex=REFRESH_LEASE_SECONDS)

    def finish_refresh(self, user_id: str, error: str | None = None) -> None:
        """The refresh ended (with `error` when the jobs could not be listed); wake the long polls."""
        key = keys.jobs(user_id)
        now = repr(self.clock())
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(key, mapping={"refreshed_at": now, "error": error or ""})
        if error:  # not asked again before the TTL is over either
            pipe.hset(key, "listed_at", now)
            pipe.hdel(key, "refused")  # the error is the refresh's own, not listOldJobs.php's
        pipe.expire(key, CACHE_KEEP_SECONDS)
        pipe.delete(keys.jobs_refresh(user_id))
        pipe.publish(keys.jobs_events(user_id), REFRESHED)
        pipe.execute()

    # -- asking for a refresh (the API) -------------------------------------------------------
    def request_refresh(self, user_id: str, send: Callable[[str], None]) -> bool:
        """Have a worker refresh the user's jobs unless one already is; True when one was sent.

        `send` is `Dispatch.refresh_jobs`; if it raises, the request is withdrawn so a later call
        can try again.
        """
        if not self.connection.set(keys.jobs_refresh(user_id), "1", nx=True, ex=REFRESH_LEASE_SECONDS):
            return False
        try:
            send(user_id)
        except BaseException:
            self.connection.delete(keys.jobs_refresh(user_id))
            raise
        return True

    def wait_refreshed(self, user_id: str, timeout: float) -> bool:
        """Wait until no refresh of the user's jobs is under way, at most `timeout` s; True if none is.

        Watches the user's channel (the process's one `EventListener`) before looking, so a refresh
        that ends in between is not missed; looks again only on news, never polling the cache.
        """
        with self.events.watching(keys.jobs_events(user_id)) as waiter:
            deadline = time.monotonic() + timeout
            refreshing = self.refreshing(user_id)
            while refreshing:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or waiter.wait(remaining) is None:
                    return False
                refreshing = self.refreshing(user_id)
            return True
