"""`ukcancel serve` with Redis: the API under gunicorn, gevent workers for long polls.

gunicorn is started in a fresh interpreter (this process is replaced), exactly as Compose, systemd
and the image run it: its master imports none of the service, so each gevent worker patches the
standard library before anything has imported `ssl` (no MonkeyPatchWarning) and then loads
`ukcancel.wsgi:app`. There is no gunicorn access log: the app logs one line per request itself
(`ukcancel.service.request_log`), so each request is logged once.
"""

from __future__ import annotations

import os
import sys


def gunicorn_argv(host: str, port: int, workers: int) -> list[str]:
    # gevent: a long poll (?wait=60) holds a greenlet, not a thread (benchmark 7: 1,000 at once).
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers),
            "--worker-class", "gevent", "--worker-connections", "2000", "--timeout", "90",
            # gunicorn's maximum: a GET /v1/jobs with 1,000 short job_ids fits (docs/operators/security.md).
            "--limit-request-line", "8190", "ukcancel.wsgi:app"]


def run_gunicorn(host: str, port: int, workers: int) -> None:
    argv = gunicorn_argv(host, port, workers)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
