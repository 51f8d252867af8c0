"""Listing cancel commands newest first, a page at a time, behind an opaque cursor.

The order is that of the index sorted sets: created_at descending, then command id descending
(how Redis orders equal scores in a reverse range). A cursor is the position of the last command a
page covered, so new commands arriving at the top never shift the pages a client is following.

Filters on state and job_id need each command's record; a page reads at most `SCAN_BUDGET` index
entries. When the budget runs out first, the page holds fewer than `limit` items (possibly none)
and `next_cursor` carries on from where the scan stopped: a client follows `next_cursor` until it
is null, never stopping at a short page.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from ukcancel import keys
from ukcancel.command import CancelCommand, CommandRegistry
from ukcancel.store import as_text

SCAN_BUDGET = 1000
CHUNK = 100


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class Position:
    """Where a page ended: the score (created_at) and id of the last index entry it covered."""

    score: float
    command_id: str

    def encode(self) -> str:
        raw = f"{self.score!r}:{self.command_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            score, command_id = raw.split(":", 1)
            position = cls(float(score), command_id)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidCursor("not a cursor this service issued") from None
        if not command_id or position.score != position.score:  # NaN
            raise InvalidCursor("not a cursor this service issued")
        return position

    def precedes(self, score: float, command_id: str) -> bool:
        """True if the entry (score, command_id) comes after this position in listing order."""
        return score < self.score or (score == self.score and command_id < self.command_id)


@dataclass(frozen=True)
class CommandFilter:
    state: str | None = None
    job_id: int | None = None
    created_after: float | None = None  # epoch seconds, exclusive

    def matches(self, command: CancelCommand) -> bool:
        return (self.state is None or command.state == self.state) and (
            self.job_id is None or command.job_id == self.job_id
        )


@dataclass(frozen=True)
class Page:
    items: list[CancelCommand]
    next_cursor: str | None


class CommandListing:
    """Pages through one index of command ids (a user's, or every user's for an admin).

    Reads ``ukcancel:user:{user_id}:cmds`` or ``ukcancel:cmds`` and the command records; writes
    nothing (see `ukcancel.keys`).
    """

    def __init__(self, registry: CommandRegistry, scan_budget: int = SCAN_BUDGET) -> None:
        self.registry = registry
        self.connection: redis.Redis = registry.connection
        self.scan_budget = scan_budget

    def page_of(self, user_id: str | None, where: CommandFilter, after: Position | None, limit: int) -> Page:
        """A page of `user_id`'s commands, or of every user's when `user_id` is None."""
        index = keys.ALL_COMMANDS if user_id is None else keys.user_commands(user_id)
        return self.page(index, where, after, limit)

    def page(self, index: str, where: CommandFilter, after: Position | None, limit: int) -> Page:
        items: list[CancelCommand] = []
        last: Position | None = None
        scanned = 0
        for chunk in self._chunks(index, where.created_after, after):
            for (command_id, score), command in zip(chunk, self.registry.get_many([c for c, _ in chunk])):
                if command is not None and where.matches(command):
                    if len(items) == limit and last is not None:  # one more exists: stop before it
                        return Page(items, last.encode())
                    items.append(command)
                last = Position(score, command_id)
                scanned += 1
                if scanned >= self.scan_budget:
                    return Page(items, last.encode())
        return Page(items, None)

    def _chunks(
        self, index: str, created_after: float | None, after: Position | None
    ) -> Iterator[list[tuple[str, float]]]:
        """Index entries after `after`, newest first, in chunks.

        Offsets count from a fixed top score (inclusive), so commands added during the scan (all
        newer than the top) do not shift them; pruning removes only the oldest entries.
        """
        bottom = f"({created_after!r}" if created_after is not None else "-inf"
        top = repr(after.score) if after is not None else "+inf"
        offset = 0
        while True:
            rows = self.connection.zrevrangebyscore(index, top, bottom, start=offset, num=CHUNK, withscores=True)
            if not rows:
                return
            if top == "+inf":
                top = repr(rows[0][1])
            offset += len(rows)
            entries = [(as_text(member), score) for member, score in rows]
            kept = [(m, s) for m, s in entries if after is None or after.precedes(s, m)]
            if kept:
                yield kept
            if len(rows) < CHUNK:
                return

