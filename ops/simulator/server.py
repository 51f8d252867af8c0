"""An HTTP stand-in for the UKSSDC XRT product servers, with faults injected on the wire.

Built on the standard library's threading HTTP server rather than a web framework because the
faults it must reproduce live below the framework level: a connection closed without a reply,
a reply cut short, a server that never answers.

The UKSSDC endpoints sit directly under the base URL (`BASE/canceljob.php`). Control endpoints
under `/_sim/` let a simulator in another process be driven over HTTP; they answer
`application/json` and never appear in the request log.
"""

from __future__ import annotations

import json
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from .state import (
    API_VERSION,
    CANCEL_OK,
    HTTP_ERROR_KINDS,
    PRODUCT_STATE_TEXTS,
    PRODUCTS,
    Fault,
    LogEntry,
    SimulatorState,
    expand_table,
)

CONTROL_PREFIX = "/_sim/"
# The real server labels its JSON as HTML; clients must parse the body, not trust the header.
API_CONTENT_TYPE = "text/html; charset=UTF-8"
CONTROL_CONTENT_TYPE = "application/json"
# The real server's JSON replies start with blank lines.
API_BODY_PREFIX = "\n\n"

CANCEL_TEXTS: dict[int, str] = {
    0: "Job cancelled OK",
    1: "Job could not be cancelled - has it already finished?",
    2: "No record of that product for this job",
    3: "Job could not be cancelled - reason unknown",
    4: "Outcome unknown - an error prevented the server from determining whether the job was cancelled",
}

# Request-flag names listOldJobs.php reports per job, by product short name (no SourceDet flag).
OLD_JOB_FLAGS: dict[str, str] = {short: long for short, long in PRODUCTS.items() if short != "sourceDet"}

HTTP_REASONS: dict[int, tuple[str, str]] = {
    404: ("Not Found", "The requested URL was not found on this server."),
    405: ("Method Not Allowed", "The requested method is not allowed for this URL."),
    429: ("Too Many Requests", "You have sent too many requests in a given amount of time. Please slow down."),
    500: (
        "Internal Server Error",
        "The server encountered an internal error or misconfiguration and was unable to complete your request.",
    ),
    503: (
        "Service Unavailable",
        "The server is temporarily unable to service your request due to maintenance downtime or "
        "capacity problems. Please try again later.",
    ),
}

MAINTENANCE_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>UKSSDC - scheduled maintenance</title></head>\n"
    "<body><h1>Scheduled maintenance</h1>\n"
    "<p>The XRT product service is temporarily unavailable. Please try again later.</p>\n"
    "</body></html>\n"
)
# Bytes no JSON parser accepts: stray PHP-like output with bytes that are not even UTF-8.
GARBLED_BODY = b"\n\n\xff\xfe<b>Warning</b>: \x00\x9c{OK: \xc3\x28 ]]garbled output[[\n"


@dataclass(frozen=True)
class Reply:
    """One HTTP reply, before it is (perhaps) mangled by a fault."""

    status: int
    body: bytes
    content_type: str = API_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def html_page(status: int) -> bytes:
    """The kind of HTML error page a web server or gateway sends instead of JSON."""
    title, message = HTTP_REASONS.get(status, ("Error", "An error occurred."))
    return (
        f'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n<title>{status} {title}</title>\n'
        f"</head><body>\n<h1>{title}</h1>\n<p>{message}</p>\n</body></html>\n"
    ).encode()


def html_reply(status: int, retry_after: int | str | None = None) -> Reply:
    headers = (("Retry-After", str(retry_after)),) if retry_after is not None else ()
    return Reply(status, html_page(status), API_CONTENT_TYPE, headers)


def api_reply(payload: dict[str, Any]) -> Reply:
    """A 200 JSON reply framed the way the real server frames it."""
    return Reply(200, (API_BODY_PREFIX + json.dumps(payload)).encode())


def api_error(message: str, list_err: list[dict[str, Any]] | None = None) -> Reply:
    """`OK: 0` with `ERROR` (and APIVersion, which the official client insists on)."""
    payload: dict[str, Any] = {"OK": 0, "ERROR": message, "APIVersion": API_VERSION}
    if list_err:
        payload["listErr"] = list_err
    return api_reply(payload)


# ---- the UKSSDC endpoints -------------------------------------------------------------------


class RequestRejected(Exception):
    """The request cannot be processed; carries the `OK: 0` reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body.decode(errors="replace"))
        self.reply = reply


def _require(request: Any, *names: str) -> dict[str, Any]:
    """The request object, if it is one and has every named parameter."""
    if not isinstance(request, dict):
        raise RequestRejected(api_error("The request could not be read: the body is not a JSON object"))
    missing = [name for name in names if request.get(name) in (None, "")]
    if missing:
        raise RequestRejected(api_error(f"Missing required parameter(s): {', '.join(missing)}"))
    return request


def _owned_job(state: SimulatorState, request: dict[str, Any]) -> int:
    """The JobID, if that user owns that job; otherwise the server's ownership error.

    A JobID that is not a whole number cannot be owned by anyone, so it gets the same error.
    """
    user, raw_job = request["UserID"], request["JobID"]
    job_id: int | None = None
    if isinstance(raw_job, int) and not isinstance(raw_job, bool):
        job_id = raw_job
    elif isinstance(raw_job, str) and raw_job.strip().isdigit():
        job_id = int(raw_job.strip())
    if job_id is None or not isinstance(user, str) or not state.owns(user, job_id):
        raise RequestRejected(api_error(f"Job {raw_job} is not owned by user {user}"))
    return job_id


def _products_asked(request: dict[str, Any], key: str = "what") -> list[str]:
    """Short names from a comma-joined `what`, duplicates dropped; unknown names are an error."""
    what = request.get(key)
    if not isinstance(what, str):
        raise RequestRejected(api_error(f"{key} must be a comma-separated list of products"))
    asked = list(dict.fromkeys(name.strip() for name in what.split(",") if name.strip()))
    if not asked:
        raise RequestRejected(api_error("No products were specified"))
    unknown = [name for name in asked if name not in PRODUCTS]
    if unknown:
        raise RequestRejected(
            api_error("Unknown products were requested", [{"label": "Unknown products", "list": unknown}])
        )
    return asked


def cancel_job(state: SimulatorState, request: Any, forced: dict[str, int] | None = None) -> Reply:
    """canceljob.php: OK 1 when every product asked for was cancelled, else OK 2."""
    request = _require(request, "UserID", "JobID", "what")
    job_id = _owned_job(state, request)
    asked = _products_asked(request)
    codes = state.cancel_products(job_id, asked, forced)
    return api_reply(
        {
            "OK": 1 if all(code == CANCEL_OK for code in codes.values()) else 2,
            "JobID": job_id,
            "APIVersion": API_VERSION,
            "status": {short: CANCEL_TEXTS[code] for short, code in codes.items()},
            "statusCodes": codes,
        }
    )


def check_product_status(state: SimulatorState, request: Any, forced: dict[str, int] | None = None) -> Reply:
    """checkProductStatus.php: one entry per asked-for product that is part of the job.

    A product the job never asked for is left out of the reply rather than given an invented
    code: the official client then reports it as "not returned by the server" (-10), which is
    the least surprising reading of a server that has no record of it. No progress detail is
    simulated (`GotProgress: 0`).
    """
    request = _require(request, "UserID", "JobID", "what")
    job_id = _owned_job(state, request)
    asked = _products_asked(request)
    payload: dict[str, Any] = {"OK": 1, "JobID": job_id, "APIVersion": API_VERSION}
    for short, code in state.product_states(job_id, asked).items():
        payload[short] = {"statusCode": code, "statusText": PRODUCT_STATE_TEXTS[code], "progress": {"GotProgress": 0}}
    return api_reply(payload)


def _registered_user(state: SimulatorState, request: Any) -> str:
    request = _require(request, "UserID")
    user = request["UserID"]
    if not isinstance(user, str) or not state.is_registered(user):
        raise RequestRejected(api_error(f"The user `{user}` is not recognised / validated"))
    return user


def list_old_jobs(state: SimulatorState, request: Any, forced: dict[str, int] | None = None) -> Reply:
    """listOldJobs.php: the user's jobs newest first, with the products each asked for."""
    user = _registered_user(state, request)
    jobs = []
    for job in state.jobs_of(user):
        row: dict[str, Any] = {"JobID": job["JobID"], "Name": job["Name"], "DateSubmitted": job["DateSubmitted"]}
        row.update({flag: short in job["products"] for short, flag in OLD_JOB_FLAGS.items()})
        row["hasProd"] = any(code == 4 for code in job["products"].values())
        jobs.append(row)
    return api_reply({"OK": 1, "APIVersion": API_VERSION, "jobs": jobs})


def get_num_jobs(state: SimulatorState, request: Any, forced: dict[str, int] | None = None) -> Reply:
    """getNumJobs.php: how many of the user's jobs are still active.

    An unknown user gets the same error as listOldJobs.php (the two share a user check).
    """
    user = _registered_user(state, request)
    return api_reply({"OK": 1, "APIVersion": API_VERSION, "numJobs": state.active_job_count(user)})


Endpoint = Callable[[SimulatorState, Any, dict[str, int] | None], Reply]

ENDPOINTS: dict[str, Endpoint] = {
    "canceljob.php": cancel_job,
    "checkProductStatus.php": check_product_status,
    "listOldJobs.php": list_old_jobs,
    "getNumJobs.php": get_num_jobs,
}


def process_request(state: SimulatorState, endpoint: str, request: Any, forced: dict[str, int] | None) -> Reply:
    """What the server does with a request it really handles; a mistyped endpoint is a 404."""
    handler = ENDPOINTS.get(endpoint)
    if handler is None:
        return html_reply(404)
    try:
        return handler(state, request, forced)
    except RequestRejected as rejected:
        return rejected.reply


def decode_body(raw: bytes) -> Any:
    """The parsed JSON body, or its text when it is not JSON (kept as text for the log)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---- the control endpoints ------------------------------------------------------------------


class ControlError(Exception):
    """A bad control request; answered with 400 (or the given status) and a JSON error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _control_faults(state: SimulatorState, method: str, body: Any) -> Any:
    if method == "DELETE":
        state.clear_faults()
        return {"cleared": True}
    if method == "GET":
        return state.pending_faults()
    raws = body if isinstance(body, list) else [body]
    try:
        faults = [Fault.from_dict(raw) for raw in raws]
    except (TypeError, ValueError) as error:
        raise ControlError(str(error)) from error
    state.add_faults(*faults)
    return {"queued": len(faults)}


def _control_latency(state: SimulatorState, method: str, body: Any) -> Any:
    if method == "GET":
        return {"ms": state.latency_ms}
    if not isinstance(body, dict) or "ms" not in body:
        raise ControlError('expected {"ms": <milliseconds>}')
    try:
        state.set_latency(body["ms"])
    except ValueError as error:
        raise ControlError(str(error)) from error
    return {"ms": state.latency_ms}


def _control_log(state: SimulatorState, method: str, body: Any) -> Any:
    if method == "DELETE":
        return {"cleared": state.clear_log()}
    return state.log()


def _control_jobs(state: SimulatorState, method: str, body: Any) -> Any:
    if method == "GET":
        return state.jobs()
    try:
        users, jobs = expand_table(body)
        state.load_jobs(jobs, users)
    except (TypeError, ValueError) as error:
        raise ControlError(str(error)) from error
    return {"jobs": len(jobs), "users": len(state.registered_users())}


ControlEndpoint = Callable[[SimulatorState, str, Any], Any]

# name -> (handler, methods it accepts)
CONTROL_ENDPOINTS: dict[str, tuple[ControlEndpoint, frozenset[str]]] = {
    "faults": (_control_faults, frozenset({"GET", "POST", "DELETE"})),
    "latency": (_control_latency, frozenset({"GET", "POST"})),
    "log": (_control_log, frozenset({"GET", "DELETE"})),
    "jobs": (_control_jobs, frozenset({"GET", "POST"})),
}


def control_reply(state: SimulatorState, method: str, name: str, raw: bytes) -> Reply:
    """Answer a `/_sim/<name>` request with JSON."""
    try:
        if name not in CONTROL_ENDPOINTS:
            raise ControlError(f"unknown control endpoint {name!r}; expected one of {sorted(CONTROL_ENDPOINTS)}", 404)
        handler, methods = CONTROL_ENDPOINTS[name]
        if method not in methods:
            raise ControlError(f"{method} is not allowed on /_sim/{name}", 405)
        body: Any = None
        if method == "POST":
            try:
                body = json.loads(raw.decode("utf-8"))
            except ValueError as error:
                raise ControlError(f"the body is not JSON: {error}") from error
        status, payload = 200, handler(state, method, body)
    except ControlError as error:
        status, payload = error.status, {"error": str(error)}
    return Reply(status, json.dumps(payload).encode(), CONTROL_CONTENT_TYPE)


# ---- the HTTP layer -------------------------------------------------------------------------


class SimulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can be stopped even while handlers are held by faults."""

    daemon_threads = True
    # Handlers may be sleeping in a timeout fault: never wait for them on close.
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: SimulatorState) -> None:
        self.state = state
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, SimulatorRequestHandler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS look-up the base class does for `server_name`."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Cut kept-alive client connections, so nothing is answered after a stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away (they do, on purpose, in timeout tests)."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class SimulatorRequestHandler(BaseHTTPRequestHandler):
    """Routes one HTTP request to a UKSSDC endpoint (with its fault) or to a control endpoint."""

    protocol_version = "HTTP/1.1"  # keep-alive, as clients with a session expect
    server_version = "UKSSDC-simulator/1.0"
    sys_version = ""
    timeout = 120  # an idle kept-alive connection is closed after this
    server: SimulatorHTTPServer
    _log_entry: LogEntry | None = None  # the UKSSDC request being answered, if any

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base-class signature
        """The request log lives in the state; keep stderr clean."""

    # -- routing --

    def do_POST(self) -> None:
        self._route("POST")

    def do_GET(self) -> None:
        self._route("GET")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        raw = self._read_body()
        if path.startswith(CONTROL_PREFIX):
            self._send(control_reply(self.server.state, method, path[len(CONTROL_PREFIX) :].strip("/"), raw))
        elif method != "POST":
            self._send(html_reply(405 if path.strip("/") in ENDPOINTS else 404))
        else:
            self._serve_api(path.strip("/"), raw)

    def _read_body(self) -> bytes:
        """The request body, sent with a Content-Length or chunked; none if neither."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            # The end of the body is unknowable: answer, then do not reuse the connection.
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked_body(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    # -- a UKSSDC request, with its fault --

    def _serve_api(self, endpoint: str, raw: bytes) -> None:
        state = self.server.state
        received = time.time()
        request = decode_body(raw)
        fault = state.take_fault(endpoint)
        self._log_entry = state.record_request(endpoint, request, fault.kind if fault else None, received)
        try:
            self._answer(endpoint, request, fault)
        finally:
            self._note_outcome(None)  # only if nothing was sent: an error cut the request short

    def _note_outcome(self, status: int | None) -> None:
        """Complete the log entry just before the client can see the outcome.

        Done before the reply is written (or the connection closed), so a client that has its
        answer always finds the request fully logged.
        """
        entry, self._log_entry = self._log_entry, None
        if entry is not None:
            self.server.state.finish_request(entry, status, time.time())

    def _answer(self, endpoint: str, request: Any, fault: Fault | None) -> int | None:
        """Reply as the fault dictates; returns the HTTP status sent, None when none was."""
        state = self.server.state
        if not self._pause(state.latency_ms / 1000.0):
            return self._drop()
        if fault is None:
            return self._send(process_request(state, endpoint, request, None))

        kind = fault.kind
        # Faults that stop the request before the server does any work.
        if kind == "latency" and not self._pause(fault.delay_seconds):
            return self._drop()
        if kind in HTTP_ERROR_KINDS:
            return self._send(html_reply(HTTP_ERROR_KINDS[kind], fault.retry_after))
        if kind == "read_timeout":
            self._pause(fault.delay_seconds)
            return self._drop()
        if kind == "drop":
            return self._drop()
        if kind == "garbled":
            return self._send(Reply(200, GARBLED_BODY))
        if kind == "html200":
            return self._send(Reply(200, MAINTENANCE_PAGE.encode()))
        if kind == "no_ok":
            return self._send(api_reply({"APIVersion": API_VERSION, "JobID": _echo_job(request)}))

        # Faults that strike after the server has done the work.
        reply = process_request(state, endpoint, request, fault.codes)
        if kind == "read_timeout_after_processing":
            self._pause(fault.delay_seconds)
            return self._drop()
        if kind == "drop_after_processing":
            return self._drop()
        if kind == "truncated":
            # A complete HTTP reply whose JSON stops half-way (Content-Length matches the cut body).
            return self._send(Reply(200, reply.body[: len(reply.body) // 2], reply.content_type))
        return self._send(reply)  # latency and codes

    def _pause(self, seconds: float) -> bool:
        """Hold the request; False if the server is stopping meanwhile."""
        if seconds <= 0:
            return not self.server.stopping.is_set()
        return not self.server.stopping.wait(seconds)

    def _drop(self) -> None:
        """Close the connection without a byte of reply."""
        self._note_outcome(None)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return None

    def _send(self, reply: Reply) -> int:
        self._note_outcome(reply.status)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)
        return reply.status


def _echo_job(request: Any) -> Any:
    return request.get("JobID") if isinstance(request, dict) else None


class SimulatorServer:
    """A simulator on a background thread; a context manager that starts and stops it.

    `port=0` picks a free port; `base_url` is then the URL to give a client as the UKSSDC base.
    """

    def __init__(self, state: SimulatorState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state if state is not None else SimulatorState()
        self.host = host
        self.port = port
        self._httpd: SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> SimulatorServer:
        if self._httpd is not None:
            return self
        self._httpd = SimulatorHTTPServer((self.host, self.port), self.state)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="ukssdc-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake handlers held by faults and cut open connections."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd, self._thread = None, None
        httpd.stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _StopServing(Exception):
    """Raised from a signal handler to leave the blocking serve loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopServing(signum)


def serve_forever(host: str, port: int, jobs_path: str | Path | None = None, latency_ms: float = 0) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (the `ukcancel simulator` command)."""
    state = SimulatorState.from_file(jobs_path) if jobs_path is not None else SimulatorState()
    state.set_latency(latency_ms)
    httpd = SimulatorHTTPServer((host, port), state)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _raise_stop)
    print(f"UKSSDC simulator listening on http://{host}:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except (_StopServing, KeyboardInterrupt):
        pass
    finally:
        httpd.stopping.set()
        httpd.close_connections()
        httpd.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
