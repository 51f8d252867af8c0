"""gunicorn's own error answers as RFC 9457 problems, like every answer of the application.

gunicorn refuses a request it cannot parse before the application sees it (400), a request line
longer than `--limit-request-line` (414) or headers over its limits (431), and writes a small HTML
page for it with `gunicorn.util.write_error`. `install()` replaces that function, in the process
serving the application (`ukcancel.wsgi` calls it), with one writing `application/problem+json`
with the same status. The limits themselves are gunicorn's options: the shipped command lines
raise `--limit-request-line` to its maximum, 8190, so a long `GET /v1/jobs?job_ids=...` fits
(README "Security": up to 1,000 ids of up to 5 digits; longer selections go in a POST /v1/plans body).
"""

from __future__ import annotations

import json
from typing import Any

MEDIA_TYPE = "application/problem+json"


def problem_bytes(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"type": "about:blank", "title": reason, "status": status,
                       "detail": message[:300]}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {MEDIA_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    return head + body


def install() -> bool:
    """Make gunicorn's error pages problems; False when gunicorn is not installed."""
    try:
        from gunicorn import util
    except ImportError:
        return False

    def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        util.write_nonblock(sock, problem_bytes(int(status_int), str(reason), str(mesg)))

    util.write_error = write_problem
    return True
