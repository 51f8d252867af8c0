"""`ukcancel serve` with Redis: the API under gunicorn, threaded workers for long polls."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class ApiServer(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from ukcancel.wsgi import app

        return app


def run_gunicorn(host: str, port: int, workers: int) -> None:
    # No gunicorn access log: the app logs one line per request itself (`ukcancel.service.request_log`).
    # gevent: a long poll (?wait=60) holds a greenlet, not a thread (benchmark 7: 1,000 at once).
    ApiServer(
        {"bind": f"{host}:{port}", "workers": workers, "worker_class": "gevent", "worker_connections": 2000,
         "timeout": 90, "accesslog": "-"}
    ).run()
