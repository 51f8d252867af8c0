"""The runtime of the application handling this request (as flaskr's `get_db()` is for its database)."""

from __future__ import annotations

from flask import Flask, current_app

from ukcancel.quota import Quotas
from ukcancel.runtime import Runtime

EXTENSION = "ukcancel"
QUOTAS = "ukcancel.quotas"


def attach_runtime(app: Flask, runtime: Runtime) -> None:
    app.extensions[EXTENSION] = runtime
    app.extensions[QUOTAS] = Quotas(runtime.connection, runtime.settings)


def get_runtime() -> Runtime:
    return current_app.extensions[EXTENSION]


def get_quotas() -> Quotas:
    """The per-user quotas (`ukcancel.quota`) of this application's runtime."""
    return current_app.extensions[QUOTAS]
