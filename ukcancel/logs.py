"""Logging of every process: text or JSON lines, with the context of the work in hand, never a token.

`configure(settings)` installs one handler on the root logger (stderr), formatting records as
text or, with `UKCANCEL_LOG_FORMAT=json`, one JSON object per line (python-json-logger). Each
record carries the fields of `context(...)` in force where it was logged: `command_id`,
`batch_id`, `user` (the UKSSDC UserID), `task_id` (the Celery task), `entry_id` (a stream entry),
`request_id`; the API binds them per request, workers per task and command, the stream consumer
per entry.

Tokens never reach a log: whatever a message, an argument or a traceback holds, `ukc_...` bearer
tokens, `Bearer ...` credentials and `whsec_...` callback secrets are replaced in the formatted
line before it is written.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from ukcancel.settings import Settings
from ukcancel.token import TOKEN_PREFIX

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)
CONTEXT_FIELDS = ("command_id", "batch_id", "user", "task_id", "entry_id", "request_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("ukcancel_log_context", default={})

SECRETS = re.compile(
    rf"{re.escape(TOKEN_PREFIX)}[A-Za-z0-9_\-]+|(?i:bearer)\s+[^\s\"',;]+|whsec_[A-Za-z0-9+/=]+"
)


# The password of a URL's user information (scheme://user:password@host): the user stays.
URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*):[^@\s/]*@")


def redact(text: str) -> str:
    """`text` with every token, bearer credential, callback secret and URL password replaced by a marker."""
    return URL_PASSWORD.sub(r"\1:[redacted]@", SECRETS.sub("[redacted]", text))


def current() -> dict[str, str]:
    return dict(_context.get())


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add `fields` (None values are left out) to every record logged inside the block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add `fields` to the context until `clear()` (for hooks without a block: a request's before/teardown)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


def clear() -> None:
    _context.set({})


class ContextFilter(logging.Filter):
    """Copies the context onto each record (as attributes, which the JSON formatter emits as keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        for name in CONTEXT_FIELDS:
            if name in fields and not hasattr(record, name):
                setattr(record, name, fields[name])
        record.context = "".join(f" {n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n))
        return True


class RedactingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def formatter(log_format: str) -> logging.Formatter:
    if log_format == JSON:
        return RedactingJsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "context"],  # `context` is the text form of the same fields
        )
    return RedactingTextFormatter(TEXT_FORMAT)


def handler(log_format: str, stream: Any = None) -> logging.Handler:
    installed = logging.StreamHandler(stream if stream is not None else sys.stderr)
    installed.setFormatter(formatter(log_format))
    installed.addFilter(ContextFilter())
    return installed


def configure(settings: Settings, level: int = logging.INFO) -> logging.Handler:
    """The root logger of this process writes `settings.log_format` lines to stderr (and only there)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "ukcancel", False)]:
        root.removeHandler(old)
    installed = handler(settings.log_format)
    installed.ukcancel = True  # type: ignore[attr-defined]  # replaced, not doubled, by a second call
    root.addHandler(installed)
    root.setLevel(level)
    return installed
