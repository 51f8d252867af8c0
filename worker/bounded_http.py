"""HTTP calls whose answer is bounded: a wall-clock deadline for the whole call and a size cap.

`requests` applies its read timeout to each socket read, so a peer that sends one byte every
few seconds holds a call for as long as it likes, and `.content` reads a body of any size into
memory. `BoundedHttp.request` bounds both:

- a deadline for the whole exchange (connect, request, headers, body): a watchdog thread shuts
  the call's socket down when it passes, which ends a read blocked on a trickling peer at once,
  and the call raises `DeadlineExceeded`;
- at most `max_bytes` of body: the body is streamed and the call raises `ResponseTooLarge` as
  soon as more arrived (`max_bytes=0` reads no body at all: status and headers only).

Used by the UKSSDC client (`ukcancel.worker.ukssdc`) and meant for callback delivery as well.
Redirects are never followed. The response asks for no content coding (`Accept-Encoding:
identity`), so the cap counts the bytes that were sent.
"""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK_BYTES = 16 * 1024


class BoundedHttpError(Exception):
    """The answer was cut off: it would have exceeded a bound."""


class DeadlineExceeded(BoundedHttpError):
    """The whole call took longer than its deadline."""


class ResponseTooLarge(BoundedHttpError):
    """The response body was larger than the cap."""


@dataclass(frozen=True)
class BoundedResponse:
    status_code: int
    reason: str
    headers: Mapping[str, str]
    content: bytes = b""


@dataclass
class _Watch:
    """The connections one call uses, shut down together when its deadline passes."""

    connections: list[Any] = field(default_factory=list)
    fired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, connection: Any) -> None:
        with self.lock:
            self.connections.append(connection)
            fired = self.fired
        if fired:
            _shut(connection)

    def fire(self) -> None:
        with self.lock:
            self.fired = True
            connections = list(self.connections)
        for connection in connections:
            _shut(connection)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


_current: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar("ukcancel_bounded_http_watch", default=None)


class _WatchedMixin:
    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:  # urllib3's one place a request goes out
        watch = _current.get()
        if watch is not None:
            watch.attach(conn)
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPPool(_WatchedMixin, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_WatchedMixin, HTTPSConnectionPool):
    pass


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def bounded_session() -> requests.Session:
    """A `requests.Session` whose connections a `BoundedHttp` deadline can cut."""
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class BoundedHttp:
    """Makes bounded calls over one session (one per process: prefork children build their own)."""

    def __init__(self, session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session or bounded_session()
        self.clock = clock

    def request(
        self,
        method: str,
        url: str,
        *,
        deadline_seconds: float,
        max_bytes: int,
        connect_timeout: float,
        read_timeout: float,
        **kwargs: Any,
    ) -> BoundedResponse:
        """The response (`max_bytes` of body at most), or `DeadlineExceeded` / `ResponseTooLarge`;
        transport failures raise `requests` exceptions as usual."""
        started = self.clock()
        watch = _Watch()
        timer = threading.Timer(max(0.0, deadline_seconds), watch.fire)
        timer.daemon = True
        headers = {"Accept-Encoding": "identity", **kwargs.pop("headers", {})}
        token = _current.set(watch)
        timer.start()
        try:
            try:
                reply = self.session.request(
                    method, url, headers=headers, stream=True, allow_redirects=False,
                    timeout=(connect_timeout, read_timeout), **kwargs,
                )
            except requests.exceptions.RequestException:
                if watch.fired:
                    raise DeadlineExceeded(f"no answer within the {deadline_seconds:g} s deadline") from None
                raise
            try:
                content = self._body(reply, max_bytes, watch, deadline_seconds, started)
            finally:
                reply.close()
            return BoundedResponse(reply.status_code, reply.reason or "", dict(reply.headers), content)
        finally:
            timer.cancel()
            _current.reset(token)

    def _body(
        self, reply: requests.Response, max_bytes: int, watch: _Watch, deadline_seconds: float, started: float
    ) -> bytes:
        if max_bytes <= 0:
            return b""
        declared = reply.headers.get("Content-Length", "")
        if declared.isdigit() and len(declared) < 20 and int(declared) > max_bytes:
            raise ResponseTooLarge(f"response of {int(declared)} bytes is over the {max_bytes}-byte cap")
        parts: list[bytes] = []
        size = 0
        try:
            for chunk in reply.iter_content(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise ResponseTooLarge(f"response body over the {max_bytes}-byte cap")
                parts.append(chunk)
                if self.clock() - started > deadline_seconds:
                    watch.fire()
                    raise DeadlineExceeded(f"response not read within the {deadline_seconds:g} s deadline")
        except requests.exceptions.RequestException:
            if watch.fired:
                raise DeadlineExceeded(f"response not read within the {deadline_seconds:g} s deadline") from None
            raise
        if watch.fired:
            raise DeadlineExceeded(f"response not read within the {deadline_seconds:g} s deadline")
        return b"".join(parts)
