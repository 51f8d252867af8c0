"""The runtime of the application handling this request (as flaskr's `get_db()` is for its database)."""

from __future__ import annotations

from flask import Flask, current_app

from ukcancel.runtime import Runtime

EXTENSION = "ukcancel"


def attach_runtime(app: Flask, runtime: Runtime) -> None:
    app.extensions[EXTENSION] = runtime


def get_runtime() -> Runtime:
    return current_app.extensions[EXTENSION]
