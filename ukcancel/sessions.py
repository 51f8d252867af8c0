"""The web console's server-side sessions: one record per signed-in cookie (``ukcancel:console:session:{id}``).

The console (`ukcancel.service.console`) keeps the token's name and SHA-256 in its signed cookie and
the session id there too; the record here is what makes the cookie worth anything. Signing out
deletes it, which ends every copy of that cookie; it expires after `console_session_seconds`.
"""

from __future__ import annotations

import redis

from ukcancel import keys


class ConsoleSessions:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def open(self, session_id: str, token_name: str, seconds: int) -> None:
        """Record a signed-in session of `token_name` for `seconds`."""
        self.connection.set(keys.console_session(session_id), token_name, ex=seconds)

    def is_open(self, session_id: str) -> bool:
        """True while the session was neither signed out nor expired."""
        return bool(self.connection.exists(keys.console_session(session_id)))

    def close(self, session_id: str) -> None:
        """Sign the session out: every copy of its cookie is worth nothing from now on."""
        self.connection.delete(keys.console_session(session_id))
