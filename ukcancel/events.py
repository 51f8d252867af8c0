"""One pub/sub listener per process, for every long poll the process holds.

A long poll (`GET /v1/cancellations/{id}?wait=N`, a batch's `?wait=N`) waits for its command's
or batch's channel (``ukcancel:events:{id}``, ``ukcancel:events:batch:{id}``, written by the
transition script). Rather than one Redis connection per waiter, `EventListener` holds one
pattern subscription (``ukcancel:events:*``) and wakes the waiters of a channel when a message
arrives on it; a thousand waiters cost a thousand events, not a thousand connections. Under
gunicorn's gevent worker the listener and the waiters are greenlets.

A waiter registers before it reads the record, so a transition between the read and the wait is
not missed. After the listener loses Redis and resubscribes it wakes every waiter, which reads
its record again: whatever was published meanwhile is not lost either.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator

import redis

from ukcancel import keys
from ukcancel.store import as_text

log = logging.getLogger(__name__)

PATTERN = f"{keys.PREFIX}:events:*"
SUBSCRIBE_WAIT_SECONDS = 5.0


class Waiter:
    """What one long poll has heard on its channel since it last looked."""

    def __init__(self) -> None:
        self._news = threading.Event()
        self._lock = threading.Lock()
        self._messages: list[str] = []
        self._missed = False

    def deliver(self, message: str) -> None:
        with self._lock:
            self._messages.append(message)
        self._news.set()

    def miss(self) -> None:
        """The listener may have missed messages: the waiter must read its record again."""
        with self._lock:
            self._missed = True
        self._news.set()

    def wait(self, timeout: float) -> tuple[list[str], bool] | None:
        """(messages heard, whether some may have been missed) once there is news; None after `timeout`."""
        if not self._news.wait(timeout):
            return None
        with self._lock:
            self._news.clear()
            messages, self._messages = self._messages, []
            missed, self._missed = self._missed, False
        return messages, missed


class EventListener:
    """Redis keys: subscribes to the pub/sub channels ``ukcancel:events:*`` (see `ukcancel.keys`)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._waiters: dict[str, set[Waiter]] = defaultdict(set)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, channel: str) -> Iterator[Waiter]:
        """A waiter told of every message on `channel` (and of any the listener may have missed)."""
        self._start()
        if not self._subscribed.wait(SUBSCRIBE_WAIT_SECONDS):
            log.warning("event listener not subscribed yet; the long poll may answer only at its end")
        woken = Waiter()
        with self._lock:
            self._waiters[channel].add(woken)
        try:
            yield woken
        finally:
            with self._lock:
                waiting = self._waiters.get(channel)
                if waiting is not None:
                    waiting.discard(woken)
                    if not waiting:
                        del self._waiters[channel]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())

    def _start(self) -> None:
        # Started on first use, in the process that serves (gunicorn forks before any request).
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ukcancel-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self.connection.pubsub()
            try:
                pubsub.psubscribe(PATTERN)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "psubscribe":
                        break
                # Waiters that registered while the listener was away read their records again;
                # those that register from now on are covered by the subscription.
                self._wake_all()
                self._subscribed.set()
                delay = 0.1
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "pmessage":
                        self._wake(as_text(message["channel"]), as_text(message["data"]))
            except Exception as exc:  # Redis away, or its socket closed under us: never end the listener
                self._subscribed.clear()
                log.warning("event listener lost Redis (retrying in %.1f s): %r", delay, exc)
                self._wake_all()  # waiters fall back to reading their records
                threading.Event().wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _wake(self, channel: str, message: str) -> None:
        with self._lock:
            waiting = list(self._waiters.get(channel, ()))
        for woken in waiting:
            woken.deliver(message)

    def _wake_all(self) -> None:
        with self._lock:
            waiting = [woken for waiters in self._waiters.values() for woken in waiters]
        for woken in waiting:
            woken.miss()
