"""One log line per request, and the request's context on every line logged while answering it.

Before each request the context is reset and given the request id (the client's `X-Request-Id`
when it is a plain token, else a new one, echoed back) and the command or batch id of the URL;
`ukcancel.service.auth` adds the caller's user once the token is known. Headers are never
logged, so neither is a bearer token.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from flask import Flask, Response, g, request

from ukcancel import logs

log = logging.getLogger("ukcancel.service.access")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _request_ids() -> itertools.count[int]:
    return itertools.count(1)


# A request id of our own: 32 hex digits, a random prefix per process and a counter (unique
# without reading the kernel's random source on every request). Forked workers start a new prefix.
_prefix = os.urandom(8).hex()
_counter = _request_ids()


def _renew_after_fork() -> None:
    global _prefix, _counter
    _prefix, _counter = os.urandom(8).hex(), _request_ids()


os.register_at_fork(after_in_child=_renew_after_fork)


def new_request_id() -> str:
    return f"{_prefix}{next(_counter):016x}"


def install(app: Flask) -> None:
    @app.before_request
    def bind_request() -> None:
        logs.clear()
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if REQUEST_ID.match(given) else new_request_id()
        g.logged_since = time.perf_counter()
        view_args = request.view_args or {}
        logs.bind(request_id=g.request_id, command_id=view_args.get("command_id"), batch_id=view_args.get("batch_id"))

    @app.after_request
    def log_request(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        if request.path not in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes would drown the rest
            seconds = time.perf_counter() - g.get("logged_since", time.perf_counter())
            log.info("%s %s %s %.3f s", request.method, request.path, response.status_code, seconds,
                     extra={"status": response.status_code, "duration_seconds": round(seconds, 4)})
        return response

    @app.teardown_request
    def unbind(exc: BaseException | None) -> None:
        logs.clear()
