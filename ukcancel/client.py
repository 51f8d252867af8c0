"""A Python client of the service that answers the way `XRTProductRequest.cancelProducts()` does.

    >>> client = Client("http://localhost:8000", token)
    >>> client.cancel_products(1001, ("LightCurve", "StandardPos"))
    (1, {'LightCurve': {'code': 0, 'text': 'Job cancelled OK'}, 'StandardPos': {...}})

Connection errors to the service itself are retried with back-off, and a 429 from the service
is honoured by waiting for its Retry-After.
"""

from __future__ import annotations

import random
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
                try:
                    problem = response.json()
                except ValueError:
                    problem = {"title": response.reason, "detail": response.text[:200]}
                raise ServiceError(response.status_code, problem)
            return response
        raise AssertionError("unreachable")

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
        return self.request("POST", "/v1/cancellations", json=body, headers=headers).json()["id"]

    def get(self, command_id: str, wait: int = 0) -> dict[str, Any]:
        return self.request("GET", f"/v1/cancellations/{command_id}", params={"wait": wait} if wait else None).json()

    def wait(self, command_id: str, timeout: float | None = None, poll: int = 60) -> dict[str, Any]:
        """The command once terminal (long polls of up to `poll` s), or as it is after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = poll if deadline is None else max(0, min(poll, int(deadline - time.monotonic())))
            command = self.get(command_id, wait=remaining)
            if command["state"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return command

    def cancel_products(
        self, job_id: int, what: str | Sequence[str] = "all", wait: bool = True, **submit_options: Any
    ) -> tuple[int, dict[str, Any]] | str:
        """Like `XRTProductRequest.cancelProducts(what)`: the `(status, detail)` tuple, through the queue.

        With `wait=False` the command id is returned at once, to `wait()` for later.
        """
        command_id = self.submit(job_id, what, **submit_options)
        if not wait:
            return command_id
        return as_tuple(self.wait(command_id))

    def withdraw(self, command_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/cancellations/{command_id}").json()

    def list(self, **filters: Any) -> Iterable[dict[str, Any]]:
        """The caller's commands, newest first, following the pagination cursor."""
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self.request("GET", "/v1/cancellations", params=params).json()
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

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
        return self.request("POST", "/v1/batches", json=body).json()["id"]

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
        return self.request("GET", f"/v1/batches/{batch_id}", params=params or None).json()

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
    ) -> dict[str, Any]:
        """The batch once every item is terminal (or it failed), with all its items.

        Long polls of up to 60 s; with a `progress` callback, which is handed each view as it
        comes, the polls are shorter so the caller can show progress.
        """
        poll = PROGRESS_POLL_SECONDS if progress is not None else 60
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = poll if deadline is None else max(0, min(poll, int(deadline - time.monotonic())))
            view = self.get_batch(batch_id, wait=remaining, limit=1)
            if progress is not None:
                progress(view)
            if view["state"] in BATCH_ENDED or (deadline is not None and time.monotonic() >= deadline):
                break
        view["items"] = list(self.batch_items(batch_id))
        view["next_cursor"] = None
        return view

    def withdraw_batch(self, batch_id: str) -> dict[str, Any]:
        """Withdraw every item of the batch that has not started."""
        return self.request("DELETE", f"/v1/batches/{batch_id}").json()


BATCH_ENDED = ("completed", "failed")
BATCH_PAGE = 1000
PROGRESS_POLL_SECONDS = 2


def _batch_item(item: Mapping[str, Any] | tuple[int, str | Sequence[str]]) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    job_id, what = item
    return {"job_id": job_id, "products": what if isinstance(what, str) else list(what)}
