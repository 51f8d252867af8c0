"""Turns on a real Redis broker: sent (`send_turns`) and counted back (`CeleryDispatch.queued_turns`)."""

from __future__ import annotations

import pytest

from ukcancel.assemble import create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.worker.celery_app import QUEUE
from ukcancel.worker.tasks import CONTROL_QUEUE, celery_of, send_turns


@pytest.fixture
def runtime(redis_url: str) -> Runtime:
    return create_runtime(Settings(redis_url=redis_url))


def test_every_turn_is_sent_and_counted_as_queued(runtime: Runtime) -> None:
    assert runtime.dispatch.queued_turns() == 0  # no queue declared yet
    for count in (1, 2, 6):
        runtime.connection.delete(QUEUE)
        send_turns(celery_of(runtime), count)
        assert runtime.connection.llen(QUEUE) == count
        assert runtime.dispatch.queued_turns() == count


def test_control_work_goes_to_its_own_queue(runtime: Runtime) -> None:
    runtime.dispatch.expand_all_active("b" * 32)
    runtime.dispatch.refresh_jobs("astro@example.org")
    assert runtime.connection.llen(CONTROL_QUEUE) == 2
    assert runtime.connection.llen(QUEUE) == 0 and runtime.dispatch.queued_turns() == 0
