"""A Python client of the service that answers the way `XRTProductRequest.cancelProducts()` does.

    >>> client = Client("http://localhost:8000", token)
    >>> client.cancel_products(1001, ("LightCurve", "StandardPos"))
    (1, {'LightCurve': {'code': 0, 'text': 'Job cancelled OK'}, 'StandardPos': {...}})

Connection errors to the service itself are retried with back-off, and a 429 from the service
is honoured by waiting for its Retry-After. An answer that is not this service's JSON (a web
server's HTML page, a proxy's error) raises `UnexpectedAnswer`, never a decoding error.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import requests

from ukcancel.command import ABORTED, TERMINAL
from ukcancel.outcome import withdrawn_tuple


class ServiceError(RuntimeError):
    """The service answered with an error (a problem+json body); `problem` holds it."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {problem.get('detail') or problem.get('title')}")
        self.status = status
        self.problem = problem


class UnexpectedAnswer(ServiceError):
    """The URL answered, but not as this service does: not JSON, or JSON that is not its answer.

    Most often the base URL names another server (its HTML 404 page) or a proxy in front of a
    service that is down. `glimpse` is the page's title or first line, to recognise it by.
    """

    def __init__(self, status: int, url: str, content_type: str, body: str, reason: str = "") -> None:
        self.url = url
        self.content_type = content_type.split(";")[0].strip() or "no content type"
        self.glimpse = _glimpse(body)
        super().__init__(status, {"title": reason or "Unexpected answer", "detail": self.glimpse})
        self.args = (f"{url} answered HTTP {status} ({self.content_type}), not as the ukssdc-cancel API does",)


def _glimpse(body: str) -> str:
    """An HTML page's <title>, or the first line of anything else, cut short."""
    title = re.search(r"<title[^>]*>(.*?)</title>", body, flags=re.IGNORECASE | re.DOTALL)
    text = title.group(1) if title else next((line for line in body.splitlines() if line.strip()), "")
    return " ".join(text.split())[:80]


def not_found(exc: ServiceError) -> bool:
    """The service itself said 404 (an unknown id), not some other server's page."""
    return exc.status == 404 and not isinstance(exc, UnexpectedAnswer)


def as_tuple(command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A terminal command's result as the `(status, detail)` tuple of `cancelProducts()`."""
    if command["state"] == ABORTED or command.get("result") is None:
        status, detail = withdrawn_tuple(command.get("last_error"))
        return status, detail
    status, detail = command["result"]
    return status, detail


class Client:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 75.0,
        connect_attempts: int = 5,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the service URL must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_attempts = connect_attempts
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.sleep = sleep

    # -- transport --------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One call to the service, retrying connection failures and honouring 429 Retry-After."""
        for attempt in range(1, self.connect_attempts + 1):
            try:
                response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
            except requests.ConnectionError:
                if attempt == self.connect_attempts:
                    raise
                self.sleep(random.uniform(0, min(10.0, 0.5 * 2**attempt)))
                continue
            if response.status_code == 429 and attempt < self.connect_attempts:
                self.sleep(float(response.headers.get("Retry-After", "1") or 1))
                continue
            if response.status_code >= 400:
                raise ServiceError(response.status_code, self._problem(response))
            return response
        raise AssertionError("unreachable")

    def document(self, response: requests.Response, *required: str) -> dict[str, Any]:
        """The JSON object of a successful answer, holding at least the `required` keys."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or any(key not in body for key in required):
            raise self._unexpected(response)
        return body

    @classmethod
    def _problem(cls, response: requests.Response) -> dict[str, Any]:
        """An error answer's problem+json body; anything else is not this service speaking."""
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict) or not ("title" in problem or "detail" in problem):
            raise cls._unexpected(response)
        return problem

    @staticmethod
    def _unexpected(response: requests.Response) -> UnexpectedAnswer:
        return UnexpectedAnswer(response.status_code, response.url, response.headers.get("Content-Type", ""),
                                response.text[:2000], response.reason or "")

    def readiness(self) -> dict[str, Any]:
        """`GET /readyz`: ``{"status", "checks"}``, whether ready (200) or not (503).

        Asked once, without retries: it is advice to show, not a step the caller depends on.
        """
        response = self.session.get(self.base_url + "/readyz", timeout=min(self.timeout, 10.0))
        if response.status_code not in (200, 503):
            raise ServiceError(response.status_code, self._problem(response))
        return self.document(response, "status", "checks")

    # -- commands ---------------------------------------------------------------------------
    def submit(
        self,
        job_id: int,
        what: str | Sequence[str] = "all",
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Enqueue a cancel command; returns its id."""
        body: dict[str, Any] = {"job_id": job_id, "products": what if isinstance(what, str) else list(what)}
        if user_id is not None:
            body["user_id"] = user_id
        if callback_url is not None:
            body["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.document(self.request("POST", "/v1/cancellations", json=body, headers=headers), "id")["id"]

    def get(self, command_id: str, wait: int = 0) -> dict[str, Any]:
        response = self.request("GET", f"/v1/cancellations/{command_id}", params={"wait": wait} if wait else None)
        return self.document(response, "id", "state")

    def wait(self, command_id: str, timeout: float | None = None, poll: int = 60) -> dict[str, Any]:
        """The command once terminal (long polls of up to `poll` s), or as it is after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _poll_seconds(poll, deadline)
            command = self.get(command_id, wait=remaining)
            if command["state"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return command

    def cancel_products(
        self, job: Any, what: str | Sequence[str] = "all", wait: bool = True, **submit_options: Any
    ) -> tuple[int, dict[str, Any]] | str:
        """Like `XRTProductRequest.cancelProducts(what)`: the `(status, detail)` tuple, through the queue.

        `job` is a JobID, or a `swifttools` `XRTProductRequest` (any object with a `JobID`): its
        JobID is taken, and for `what="all"` its `productList` when it has one, as
        `cancelProducts()` does. With `wait=False` the command id is returned at once, to
        `wait()` for later.
        """
        job_id, what = job_and_products(job, what)
        command_id = self.submit(job_id, what, **submit_options)
        if not wait:
            return command_id
        return as_tuple(self.wait(command_id))

    def withdraw(self, command_id: str) -> dict[str, Any]:
        return self.document(self.request("DELETE", f"/v1/cancellations/{command_id}"), "id", "state")

    def list_page(self, **filters: Any) -> dict[str, Any]:
        """One page of the caller's commands: ``{"items", "next_cursor"}``.

        Filters are the query of ``GET /v1/cancellations``: state, job_id, created_after (a
        datetime or ISO 8601 text), user_id, limit, cursor; None values are left out.
        """
        params = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in filters.items() if v is not None}
        response = self.request("GET", "/v1/cancellations", params=params)
        page = self.document(response, "items")
        if not isinstance(page["items"], list):
            raise self._unexpected(response)
        return page

    def list(self, **filters: Any) -> Iterable[dict[str, Any]]:
        """The caller's commands, newest first, following the pagination cursor."""
        filters = dict(filters)
        while True:
            page = self.list_page(**filters)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            filters["cursor"] = page["next_cursor"]

    # -- batches ----------------------------------------------------------------------------
    def submit_batch(
        self,
        items: Iterable[Mapping[str, Any] | tuple[int, str | Sequence[str]]] | None = None,
        all_active: bool = False,
        user_id: str | None = None,
    ) -> str:
        """Enqueue a batch; returns its id.

        `items` are ``{"job_id": ..., "products": ...}`` mappings or ``(job_id, what)`` pairs;
        with `all_active=True` the service finds every product of the user still being built.
        """
        if all_active == (items is not None):
            raise ValueError("give either items or all_active=True")
        body: dict[str, Any] = {"all_active": True} if all_active else {"items": [_batch_item(i) for i in items or ()]}
        if user_id is not None:
            body["user_id"] = user_id
        return self.document(self.request("POST", "/v1/batches", json=body), "id")["id"]

    def get_batch(
        self, batch_id: str, wait: int = 0, cursor: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """The batch's progress and one page of its items (`next_cursor` leads to the next)."""
        params: dict[str, Any] = {}
        if wait:
            params["wait"] = wait
        if cursor is not None:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        response = self.request("GET", f"/v1/batches/{batch_id}", params=params or None)
        return self.document(response, "id", "state", "total", "counts", "results", "items")

    def batch_items(self, batch_id: str) -> Iterable[dict[str, Any]]:
        """Every item of the batch, in order, following the pagination cursor."""
        cursor: str | None = None
        while True:
            page = self.get_batch(batch_id, cursor=cursor, limit=BATCH_PAGE)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def wait_batch(
        self,
        batch_id: str,
        progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        items: bool = True,
    ) -> dict[str, Any]:
        """The batch once every item is terminal (or it failed), with all its items.

        Long polls of up to 60 s; with a `progress` callback, which is handed each view as it
        comes, the polls are shorter so the caller can show progress. After `timeout` s the
        batch is returned as it stands. With `items=False` the view carries no items (its
        counts cover them all), which spares reading a large batch page by page.
        """
        poll = PROGRESS_POLL_SECONDS if progress is not None else 60
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _poll_seconds(poll, deadline)
            view = self.get_batch(batch_id, wait=remaining, limit=1)
            if progress is not None:
                progress(view)
            if view["state"] in BATCH_ENDED or (deadline is not None and time.monotonic() >= deadline):
                break
        view["items"] = list(self.batch_items(batch_id)) if items else []
        view["next_cursor"] = None
        return view

    def withdraw_batch(self, batch_id: str) -> dict[str, Any]:
        """Withdraw every item of the batch that has not started."""
        return self.document(self.request("DELETE", f"/v1/batches/{batch_id}"), "id", "state", "counts")


    # -- jobs and plans ----------------------------------------------------------------------------
    def jobs(self, wait: int = 0, **filters: Any) -> dict[str, Any]:
        """`GET /v1/jobs`: your jobs with each product's state as last read, and its age.

        Filters: name (a glob), submitted_after / submitted_before (datetime or ISO 8601), products
        (names), state ("active", "finished", "cancelled"), job_ids, user_id (admin tokens);
        None values are left out. `wait` (at most 60) waits for a refresh under way.
        """
        params = _selection_params(filters)
        if wait:
            params["wait"] = wait
        return self.document(self.request("GET", "/v1/jobs", params=params), "jobs")

    def create_plan(self, **selection: Any) -> str:
        """`POST /v1/plans` with the filters of `jobs`; the plan's id (it is computed meanwhile)."""
        return self.document(self.request("POST", "/v1/plans", json=_selection_params(selection, lists=True)), "id")["id"]

    def get_plan(self, plan_id: str, wait: int = 0) -> dict[str, Any]:
        params = {"wait": wait} if wait else None
        return self.document(self.request("GET", f"/v1/plans/{plan_id}", params=params), "id", "state", "pairs")

    def wait_plan(self, plan_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The plan once computed (ready or failed), or as it stands after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            plan = self.get_plan(plan_id, wait=_poll_seconds(60, deadline))
            if plan["state"] != "computing" or (deadline is not None and time.monotonic() >= deadline):
                return plan

    def list_plans(self, user_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """`GET /v1/plans`: the caller's plans (an admin may name a user), newest first."""
        params: dict[str, Any] = {"limit": limit}
        if user_id is not None:
            params["user_id"] = user_id
        return self.document(self.request("GET", "/v1/plans", params=params), "items")["items"]

    def apply_plan(self, plan_id: str) -> str:
        """`POST /v1/plans/{id}/apply`: the id of the batch made of exactly the plan's pairs (the same
        batch however often it is applied)."""
        return self.document(self.request("POST", f"/v1/plans/{plan_id}/apply"), "id")["id"]


def job_and_products(job: Any, what: str | Sequence[str]) -> tuple[int, str | Sequence[str]]:
    """The JobID and products to cancel, from a JobID or a submitted `XRTProductRequest`.

    A request that was never submitted raises swifttools' own RuntimeError (its `JobID` does).
    """
    if isinstance(job, bool):
        raise TypeError("job must be a JobID or an XRTProductRequest, not a bool")
    if isinstance(job, int):
        return job, what
    if not hasattr(type(job), "JobID") and not hasattr(job, "JobID"):
        raise TypeError(f"job must be a JobID or an XRTProductRequest, not {type(job).__name__}")
    job_id = job.JobID
    if isinstance(job_id, str) and job_id.strip().isdigit():
        job_id = int(job_id)
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise TypeError(f"the request's JobID {job_id!r} is not a JobID")
    if isinstance(what, str) and what == "all":
        known = list(getattr(job, "productList", None) or [])
        if known:
            return job_id, known
    return job_id, what


def _selection_params(filters: Mapping[str, Any], lists: bool = False) -> dict[str, Any]:
    """Filters for a query string (lists comma-joined) or a JSON body (`lists`); None left out."""
    out: dict[str, Any] = {}
    for name, value in filters.items():
        if value is None:
            continue
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        elif isinstance(value, (list, tuple)):
            value = list(value) if lists else ",".join(str(v) for v in value)
        out[name] = value
    return out


BATCH_ENDED = ("completed", "failed")
BATCH_PAGE = 1000
PROGRESS_POLL_SECONDS = 2


def _poll_seconds(poll: int, deadline: float | None) -> int:
    """The next long poll's `wait`: whole seconds (the API's unit), rounded up so that a
    fraction of a second left is one short poll rather than a busy loop of zero-second ones."""
    if deadline is None:
        return poll
    return max(0, min(poll, math.ceil(deadline - time.monotonic())))


def _batch_item(item: Mapping[str, Any] | tuple[int, str | Sequence[str]]) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    job_id, what = item
    return {"job_id": job_id, "products": what if isinstance(what, str) else list(what)}
