"""The helpers test modules share: one API test client (Flask's, in-process), one over real HTTP
(`HttpApi`, for an API served by a thread or another process), one fake clock, the busiest-window
count, and what a light-curve cancel must come to (`lightcurve_cancelled`).

They live here, not in a conftest.py, because a test module can import a module but not reliably a
conftest (pytest imports every directory's conftest.py under the one name ``conftest``);
`tests/conftest.py` makes them fixtures (`api_client`, `fake_clock`). ``tests/`` is on the path
because `tests/conftest.py` is a rootdir conftest outside a package.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from flask.testing import FlaskClient

from ukcancel.assemble import create_api
from ukcancel.outcome import CONFIRMED_CANCELLED_TEXT
from ukcancel.runtime import Runtime

ASTRO = "astro@example.org"


class FakeClock:
    """Time that moves only when a test says so; a registry's, queue's or gate's `clock` and `sleep`."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


class ApiClient:
    """Flask's test client on an API over `runtime`, with a bearer token per user made on first use
    (named after the user, ``-admin`` for an admin's)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.client: FlaskClient = create_api(runtime=runtime).test_client()
        self.tokens: dict[str, str] = {}

    def token(self, user: str, admin: bool = False) -> str:
        name = f"{user.split('@')[0]}{'-admin' if admin else ''}"
        if name not in self.tokens:
            self.tokens[name] = self.runtime.tokens.create(user, name=name, admin=admin)[0]
        return self.tokens[name]

    def headers(self, user: str = ASTRO, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, admin)}"}

    def get(self, path: str, user: str = ASTRO, admin: bool = False, **params: Any) -> Any:
        return self.client.get(path, query_string=params or None, headers=self.headers(user, admin))

    def post(self, path: str, body: Any = None, user: str = ASTRO, admin: bool = False) -> Any:
        if body is None:
            return self.client.post(path, headers=self.headers(user, admin))
        return self.client.post(path, json=body, headers=self.headers(user, admin))

    def delete(self, path: str, user: str = ASTRO, admin: bool = False) -> Any:
        return self.client.delete(path, headers=self.headers(user, admin))


class HttpApi:
    """The API over real HTTP (requests), with a bearer token per user (`tokens`); `user` defaults to
    `default_user`. Waiting is the API's own long poll (`?wait=`), never a sleep."""

    def __init__(self, url: str, tokens: dict[str, str], default_user: str = ASTRO) -> None:
        self.url, self.tokens, self.default_user = url, tokens, default_user

    def call(self, method: str, path: str, user: str | None = None, body: Any = None,
             **headers: str) -> requests.Response:
        token = self.tokens[user or self.default_user]
        return requests.request(method, self.url + path, json=body, timeout=90,
                                headers={"Authorization": f"Bearer {token}", **headers})

    def accepted(self, path: str, user: str | None, body: Any) -> dict[str, Any]:
        """POST `body` to `path`, which must answer 202; its JSON."""
        answer = self.call("POST", path, user, body)
        assert answer.status_code == 202, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def cancel(self, job_id: int, products: list[str] | str, user: str | None = None) -> str:
        return str(self.accepted("/v1/cancellations", user, {"job_id": job_id, "products": products})["id"])

    def command(self, command_id: str, user: str | None = None, wait: int = 0) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/cancellations/{command_id}" + (f"?wait={wait}" if wait else ""), user)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def finished(self, command_id: str, user: str | None = None, timeout: float = 180) -> dict[str, Any]:
        """The command once terminal, by long polls."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"command {command_id} not terminal after {timeout} s: {self.command(command_id, user)}")
            command = self.command(command_id, user, wait=max(1, min(int(remaining), 10)))
            if command["state"] in ("completed", "aborted"):
                return command

    def batch(self, batch_id: str, user: str | None = None, wait: int = 0, limit: int = 1000) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/batches/{batch_id}?limit={limit}" + (f"&wait={wait}" if wait else ""), user)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def batch_items(self, batch_id: str, user: str | None = None) -> list[str]:
        return [item["command_id"] for item in self.batch(batch_id, user)["items"]]


def lightcurve_cancelled(command: dict[str, Any], product: str = "LightCurve") -> bool:
    """The tuple a cancel of one product must come to: status 1, code 0, in the UKSSDC's words or
    confirmed by a status check (after a takeover or a lost reply)."""
    if command["state"] != "completed" or command["result"][0] != 1:
        return False
    outcome = command["result"][1][product]
    return outcome["code"] == 0 and outcome["text"] in ("Job cancelled OK", CONFIRMED_CANCELLED_TEXT)


def busiest_window(times: list[float], window: float = 1.0) -> int:
    """The most calls received in any sliding window of `window` seconds (`times` sorted)."""
    most, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
