"""The worker's logging: `ukcancel.logs` in place of Celery's own setup, and each task's context.

Connecting `setup_logging` tells Celery to leave logging alone; the worker then writes the same
text or JSON lines as the API. Every task's records carry its Celery task id, and the command or
batch it is about when its arguments name one (a turn learns its command only once it claims
one: `ukcancel.worker.cancellation` adds it there).
"""

from __future__ import annotations

from typing import Any

from celery import signals

from ukcancel import logs
from ukcancel.settings import Settings

ARGUMENT_FIELDS = {"command_id", "batch_id"}


def install(settings: Settings) -> None:
    def setup_logging(**kwargs: Any) -> None:
        logs.configure(settings)

    def task_started(task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None,
                     args: tuple[Any, ...] | None = None, **_: Any) -> None:
        logs.clear()
        named = {k: v for k, v in (kwargs or {}).items() if k in ARGUMENT_FIELDS}
        if not named and args and task is not None:  # positional: the task's own parameter names
            parameters = [p for p in task.run.__code__.co_varnames[: task.run.__code__.co_argcount] if p != "self"]
            named = {p: v for p, v in zip(parameters, args) if p in ARGUMENT_FIELDS}
        logs.bind(task_id=task_id, **named)

    def task_ended(**_: Any) -> None:
        logs.clear()

    # weak=False: the receivers are closures of this call, kept alive by the signal itself.
    signals.setup_logging.connect(setup_logging, weak=False)
    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_ended, weak=False)
