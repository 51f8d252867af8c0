"""Sending turns to the broker (`ukcancel.worker.tasks.send_turns`) on a real Redis broker."""

from __future__ import annotations

import pytest

from ukcancel.assemble import create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.worker.celery_app import QUEUE
from ukcancel.worker.tasks import TURN_BATCH, send_turns


@pytest.fixture
def runtime(redis_url: str) -> Runtime:
    return create_runtime(Settings(redis_url=redis_url))


def test_every_turn_is_sent(runtime: Runtime) -> None:
    for count in (1, 2, TURN_BATCH, 2 * TURN_BATCH + 7):
        runtime.connection.delete(QUEUE)
        send_turns(runtime.celery, count)
        assert runtime.connection.llen(QUEUE) == count


def test_a_failed_batch_is_sent_again_one_message_at_a_time(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.transport import redis as redis_transport

    assert hasattr(redis_transport, "PublishBatch")  # kombu >= 5.7, as pyproject.toml requires
    from kombu.exceptions import BatchPublishError

    flushes: list[object] = []

    def broken_flush(self: object) -> None:
        flushes.append(self)
        raise BatchPublishError("the connection dropped during the pipeline")

    monkeypatch.setattr(redis_transport.PublishBatch, "flush", broken_flush)
    send_turns(runtime.celery, 25)
    assert flushes, "the turns were not batched"
    assert runtime.connection.llen(QUEUE) == 25  # none lost (a real failure may also send some twice)
