"""The helpers test modules share: one API test client, one fake clock, the busiest-window count.

They live here, not in a conftest.py, because a test module can import a module but not reliably a
conftest (pytest imports every directory's conftest.py under the one name ``conftest``);
`tests/conftest.py` makes them fixtures (`api_client`, `fake_clock`). ``tests/`` is on the path
because `tests/conftest.py` is a rootdir conftest outside a package.
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from ukcancel.assemble import create_api
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


def busiest_window(times: list[float], window: float = 1.0) -> int:
    """The most calls received in any sliding window of `window` seconds (`times` sorted)."""
    most, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
