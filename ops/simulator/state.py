"""What the UKSSDC simulator knows: its job table, its fault plan and its request log.

Everything here is guarded by one lock, because the HTTP server answers requests on many
threads at once while tests inspect and change the same object in-process.

The product table is deliberately written out here rather than imported from the project's
client code: the simulator stands in for the real server, so a mistake in the client's table
must show up as a failing test, not be mirrored by the stand-in.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ukcancel.products import SHORT_TO_LONG

API_VERSION = "1.12"

# Short (wire) name -> long name: the project's one product table.
PRODUCTS: dict[str, str] = SHORT_TO_LONG

# Product states as checkProductStatus.php reports them.
PRODUCT_STATE_TEXTS: dict[int, str] = {
    -4: "Cancelled by the user",
    -3: "Finished, but no product could be built",
    -2: "Failed - an internal error stopped the job",
    -1: "Failed - the job could not be started",
    1: "Requested, not yet queued",
    2: "Queued",
    3: "Running",
    4: "Complete",
    5: "Waiting for the standard position",
}
CANCELLED = -4
COMPLETE = 4
WAITING_FOR_POSITION = 5
# States in which a product can still be cancelled; they are also the "active" states that
# getNumJobs.php counts.
ACTIVE_STATES = frozenset({1, 2, 3, WAITING_FOR_POSITION})

# canceljob.php per-product codes.
CANCEL_OK = 0
CANCEL_FINISHED = 1
CANCEL_NO_RECORD = 2
CANCEL_REASON_UNKNOWN = 3
CANCEL_OUTCOME_UNKNOWN = 4
CANCEL_CODES = frozenset(range(5))
# Forced codes under which the server did cancel a product it could cancel.
CANCEL_CODES_THAT_CANCEL = frozenset({CANCEL_OK, CANCEL_OUTCOME_UNKNOWN})

# Fault kinds, grouped by what they do to the request.
HTTP_ERROR_KINDS: dict[str, int] = {"http503": 503, "http429": 429, "http404": 404, "http500": 500}
UNPROCESSED_REPLY_KINDS = frozenset({"garbled", "html200", "no_ok"})
FAULT_KINDS = frozenset(
    {
        "latency",
        *HTTP_ERROR_KINDS,
        "read_timeout",
        "read_timeout_after_processing",
        "drop",
        "drop_after_processing",
        "truncated",
        *UNPROCESSED_REPLY_KINDS,
        "codes",
    }
)
# Kinds whose default `seconds` matters, and that default.
DEFAULT_FAULT_SECONDS: dict[str, float] = {
    "latency": 1.0,
    "read_timeout": 30.0,
    "read_timeout_after_processing": 30.0,
}

DEFAULT_JOBS_PATH = Path(__file__).with_name("default_jobs.json")

Job = dict[str, Any]
LogEntry = dict[str, Any]


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to apply to the next `count` requests to `endpoint`.

    Which kinds still apply the request to the job table (so an ambiguous outcome can be
    tested against the state the server really reached):

    - applied: `latency`, `codes`, `read_timeout_after_processing`, `drop_after_processing`,
      `truncated` (a real reply cut short on its way back);
    - not applied: `http503`, `http429`, `http404`, `http500`, `read_timeout`, `drop`,
      `garbled`, `html200`, `no_ok`.

    `seconds` defaults to 1 s for `latency` and 30 s for the timeout kinds.
    `codes` (only for `canceljob.php`) maps short product names to the code to report.
    """

    kind: str
    endpoint: str = "canceljob.php"
    count: int = 1
    seconds: float | None = None
    retry_after: int | str | None = None
    codes: dict[str, int] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if not isinstance(self.endpoint, str) or not self.endpoint.strip("/"):
            raise ValueError("a fault needs an endpoint name such as 'canceljob.php'")
        object.__setattr__(self, "endpoint", self.endpoint.strip("/"))
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"fault count must be a positive integer, not {self.count!r}")
        if self.seconds is not None and (
            isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float) or self.seconds < 0
        ):
            raise ValueError(f"fault seconds must be a non-negative number, not {self.seconds!r}")
        if self.retry_after is not None and (
            isinstance(self.retry_after, bool) or not isinstance(self.retry_after, int | str)
        ):
            raise ValueError(f"retry_after must be seconds or an HTTP date, not {self.retry_after!r}")
        self._check_codes()

    def _check_codes(self) -> None:
        """A `codes` fault must say which codes to report, and only canceljob.php has codes."""
        if self.kind != "codes":
            if self.codes is not None:
                raise ValueError("only a 'codes' fault takes codes")
            return
        if self.endpoint != "canceljob.php":
            raise ValueError("a 'codes' fault applies to canceljob.php only")
        if not isinstance(self.codes, dict) or not self.codes:
            raise ValueError("a 'codes' fault needs codes, e.g. {'lc': 4}")
        for short, code in self.codes.items():
            if short not in PRODUCTS:
                raise ValueError(f"unknown product {short!r} in fault codes")
            if isinstance(code, bool) or code not in CANCEL_CODES:
                raise ValueError(f"cancellation code for {short!r} must be 0..4, not {code!r}")

    @property
    def delay_seconds(self) -> float:
        """How long this fault holds the request: `seconds`, or the kind's default."""
        if self.seconds is not None:
            return float(self.seconds)
        return DEFAULT_FAULT_SECONDS.get(self.kind, 0.0)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fault:
        """Build a fault from its JSON form (the control endpoint's body)."""
        if not isinstance(raw, dict):
            raise ValueError(f"a fault must be a JSON object, not {raw!r}")
        unknown = set(raw) - {"kind", "endpoint", "count", "seconds", "retry_after", "codes"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "kind" not in raw:
            raise ValueError("a fault needs a kind")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _QueuedFault:
    fault: Fault
    remaining: int


def _check_product_state(job_id: int, short: str, code: Any) -> int:
    """Reject states the server never reports, so a typo in a table fails loudly."""
    if short not in PRODUCTS:
        raise ValueError(f"job {job_id}: unknown product {short!r}; expected one of {list(PRODUCTS)}")
    if isinstance(code, bool) or code not in PRODUCT_STATE_TEXTS:
        raise ValueError(f"job {job_id}: state of {short!r} must be one of {sorted(PRODUCT_STATE_TEXTS)}, not {code!r}")
    if code == WAITING_FOR_POSITION and short != "xastrom":
        raise ValueError(f"job {job_id}: state 5 is only for the astrometric position (xastrom), not {short!r}")
    return int(code)


def normalise_job(raw: dict[str, Any]) -> Job:
    """A validated, private copy of one job-table row."""
    if not isinstance(raw, dict):
        raise ValueError(f"a job must be a JSON object, not {raw!r}")
    unknown = set(raw) - {"JobID", "UserID", "Name", "DateSubmitted", "products"}
    if unknown:
        raise ValueError(f"job {raw.get('JobID')!r}: unknown fields {sorted(unknown)}")
    job_id = raw.get("JobID")
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise ValueError(f"JobID must be an integer, not {job_id!r}")
    user = raw.get("UserID")
    if not isinstance(user, str) or not user:
        raise ValueError(f"job {job_id}: UserID must be a non-empty string")
    products = raw.get("products", {})
    if not isinstance(products, dict):
        raise ValueError(f"job {job_id}: products must map short names to states")
    return {
        "JobID": job_id,
        "UserID": user,
        "Name": str(raw.get("Name", "")),
        "DateSubmitted": str(raw.get("DateSubmitted", "")),
        "products": {short: _check_product_state(job_id, short, code) for short, code in products.items()},
    }


def _generated_jobs(spec: dict[str, Any]) -> list[Job]:
    """Expand a `generate` entry: identical jobs for one user over an inclusive JobID range.

    Form: {"UserID", "first", "last", "Name" (may contain "{JobID}"), "DateSubmitted",
    "products"}. It keeps the shipped table short while giving batch tests hundreds of jobs.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a generate entry must be a JSON object, not {spec!r}")
    unknown = set(spec) - {"UserID", "first", "last", "Name", "DateSubmitted", "products"}
    if unknown:
        raise ValueError(f"generate entry: unknown fields {sorted(unknown)}")
    first, last = spec.get("first"), spec.get("last")
    if not isinstance(first, int) or not isinstance(last, int) or first > last:
        raise ValueError(f"generate entry needs integer first <= last, not {first!r}..{last!r}")
    name = str(spec.get("Name", "Job {JobID}"))
    return [
        {
            "JobID": job_id,
            "UserID": spec.get("UserID"),
            "Name": name.replace("{JobID}", str(job_id)),
            "DateSubmitted": spec.get("DateSubmitted", ""),
            "products": dict(spec.get("products", {})),
        }
        for job_id in range(first, last + 1)
    ]


def expand_table(document: Any) -> tuple[list[str], list[Job]]:
    """(listed users, validated jobs) from the JSON table format.

    The document is either a list of jobs, or an object with optional `users` (registered
    users who may have no jobs), `jobs`, `generate` (see `_generated_jobs`) and a free-text
    `description`.
    """
    if isinstance(document, list):
        users: list[Any] = []
        rows: list[Any] = list(document)
    elif isinstance(document, dict):
        unknown = set(document) - {"description", "users", "jobs", "generate"}
        if unknown:
            raise ValueError(f"job table: unknown top-level fields {sorted(unknown)}")
        users = list(document.get("users", []))
        rows = list(document.get("jobs", []))
        for spec in document.get("generate", []):
            rows.extend(_generated_jobs(spec))
    else:
        raise ValueError("a job table must be a JSON list of jobs or an object with 'jobs'")
    if not all(isinstance(user, str) and user for user in users):
        raise ValueError("registered users must be non-empty strings")
    jobs = [normalise_job(row) for row in rows]
    seen: set[int] = set()
    for job in jobs:
        if job["JobID"] in seen:
            raise ValueError(f"JobID {job['JobID']} appears twice in the job table")
        seen.add(job["JobID"])
    return users, jobs


def _read_table(path: str | Path) -> tuple[list[str], list[Job]]:
    with open(path, encoding="utf-8") as handle:
        return expand_table(json.load(handle))


def load_jobs(path: str | Path) -> list[Job]:
    """The jobs of a JSON table file, `generate` entries expanded and every row validated."""
    return _read_table(path)[1]


def load_users(path: str | Path) -> list[str]:
    """The users a JSON table file registers explicitly (job owners are registered anyway)."""
    return _read_table(path)[0]


class SimulatorState:
    """The simulated UKSSDC's job table, fault plan and request log, safe across threads."""

    def __init__(self, jobs: list[Job] | None = None, users: list[str] | None = None) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[int, Job] = {}
        self._listed_users: set[str] = set()
        self._faults: dict[str, deque[_QueuedFault]] = {}
        self._latency_ms = 0.0
        self._log: list[LogEntry] = []
        if jobs is None:
            listed, jobs = _read_table(DEFAULT_JOBS_PATH)
            users = listed if users is None else users
        self.load_jobs(jobs, users or ())

    @classmethod
    def from_file(cls, path: str | Path) -> SimulatorState:
        """A state holding the jobs and registered users of a JSON table file."""
        users, jobs = _read_table(path)
        return cls(jobs=jobs, users=users)

    # ---- the job table -------------------------------------------------------------------

    def load_jobs(self, jobs: list[Job], users: list[str] | tuple[str, ...] = ()) -> None:
        """Replace the whole table; `users` registers users who have no jobs."""
        validated = [normalise_job(job) for job in jobs]
        table = {job["JobID"]: job for job in validated}
        if len(table) != len(validated):
            raise ValueError("a JobID appears twice in the job table")
        with self._lock:
            self._jobs = table
            self._listed_users = set(users)

    def jobs(self) -> list[Job]:
        """A copy of the whole table, by JobID."""
        with self._lock:
            return [copy.deepcopy(self._jobs[job_id]) for job_id in sorted(self._jobs)]

    def job(self, job_id: int) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.deepcopy(job) if job is not None else None

    def registered_users(self) -> list[str]:
        """The listed users plus every job owner, as the real server knows its users."""
        with self._lock:
            return sorted(self._listed_users | {job["UserID"] for job in self._jobs.values()})

    def is_registered(self, user: str) -> bool:
        with self._lock:
            return user in self._listed_users or any(job["UserID"] == user for job in self._jobs.values())

    def owns(self, user: str, job_id: int) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            return job is not None and job["UserID"] == user

    def product_state(self, job_id: int, short: str) -> int:
        """The state of one product; KeyError if the job or the product does not exist."""
        with self._lock:
            return self._jobs[job_id]["products"][short]

    def set_product_state(self, job_id: int, short: str, code: int) -> None:
        """Move a product to a state (adds the product to the job if it was not part of it)."""
        code = _check_product_state(job_id, short, code)
        with self._lock:
            self._jobs[job_id]["products"][short] = code

    def product_states(self, job_id: int, shorts: list[str]) -> dict[str, int]:
        """The states of the asked-for products that are part of the job."""
        with self._lock:
            products = self._jobs[job_id]["products"]
            return {short: products[short] for short in shorts if short in products}

    def cancel_products(self, job_id: int, shorts: list[str], forced: dict[str, int] | None = None) -> dict[str, int]:
        """Cancel products atomically and return the canceljob.php code of each.

        `forced` codes replace the honest ones; a forced 0 or 4 still cancels a product that
        could be cancelled (the server did the work, then reported it), other forced codes
        leave it alone.
        """
        forced = forced or {}
        codes: dict[str, int] = {}
        with self._lock:
            products = self._jobs[job_id]["products"]
            for short in shorts:
                current = products.get(short)
                cancellable = current in ACTIVE_STATES
                if short in forced:
                    code = forced[short]
                    if cancellable and code in CANCEL_CODES_THAT_CANCEL:
                        products[short] = CANCELLED
                elif current is None:
                    code = CANCEL_NO_RECORD
                elif cancellable:
                    products[short] = CANCELLED
                    code = CANCEL_OK
                else:
                    code = CANCEL_FINISHED
                codes[short] = code
        return codes

    def jobs_of(self, user: str) -> list[Job]:
        """A user's jobs, newest first (DateSubmitted, then JobID, descending)."""
        with self._lock:
            mine = [copy.deepcopy(job) for job in self._jobs.values() if job["UserID"] == user]
        return sorted(mine, key=lambda job: (job["DateSubmitted"], job["JobID"]), reverse=True)

    def active_job_count(self, user: str) -> int:
        """Jobs of the user with a product still requested, queued or running."""
        with self._lock:
            return sum(
                1
                for job in self._jobs.values()
                if job["UserID"] == user and any(state in ACTIVE_STATES for state in job["products"].values())
            )

    # ---- the fault plan ------------------------------------------------------------------

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults for the next matching requests, first in first out per endpoint."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, not {fault!r}")
        with self._lock:
            for fault in faults:
                self._faults.setdefault(fault.endpoint, deque()).append(_QueuedFault(fault, fault.count))

    def take_fault(self, endpoint: str) -> Fault | None:
        """The fault that applies to this request, if any, using up one of its count."""
        with self._lock:
            queue = self._faults.get(endpoint)
            if not queue:
                return None
            head = queue[0]
            head.remaining -= 1
            if head.remaining <= 0:
                queue.popleft()
            return head.fault

    def pending_faults(self) -> list[dict[str, Any]]:
        """The faults still queued, with how many requests each will still hit."""
        with self._lock:
            return [
                {**queued.fault.to_dict(), "count": queued.remaining}
                for queue in self._faults.values()
                for queued in queue
            ]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_latency(self, ms: float) -> None:
        """Delay every UKSSDC request by `ms` milliseconds, like a slow remote site."""
        if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
            raise ValueError(f"latency must be a non-negative number of milliseconds, not {ms!r}")
        with self._lock:
            self._latency_ms = float(ms)

    @property
    def latency_ms(self) -> float:
        with self._lock:
            return self._latency_ms

    # ---- the request log -----------------------------------------------------------------

    def record_request(self, endpoint: str, body: Any, fault: str | None, received: float) -> LogEntry:
        """Log a request on receipt; the entry is completed by `finish_request`."""
        entry: LogEntry = {
            "t": received,
            "t_done": None,
            "endpoint": endpoint,
            "body": body,
            "status": None,
            "fault": fault,
        }
        with self._lock:
            self._log.append(entry)
        return entry

    def finish_request(self, entry: LogEntry, status: int | None, done: float) -> None:
        """Note the HTTP status sent (None when no reply was sent) and when."""
        with self._lock:
            entry["status"] = status
            entry["t_done"] = done

    def log(self) -> list[LogEntry]:
        """A copy of the request log, in order of receipt."""
        with self._lock:
            return copy.deepcopy(self._log)

    def clear_log(self) -> int:
        """Empty the log; returns how many entries it held."""
        with self._lock:
            count = len(self._log)
            self._log = []
            return count
