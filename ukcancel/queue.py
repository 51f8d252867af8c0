"""Dispatch of cancel commands to the workers, fair between UKSSDC users.

Celery queues are first in, first out: a 5,000-item batch ahead of a single cancel would
make it wait behind all of them. So a Celery message here does not name a command; it is a
turn to run "the next command". Commands wait in per-user lists in Redis, and a worker taking
its turn pops from the next user in a round-robin ring. One message is sent per command, so
every command gets a turn; the command a message took is recorded under the Celery task id,
so a redelivered (worker killed) or retried message resumes that same command.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import redis

from ukcancel import keys
from ukcancel.command import CancelCommand, CommandRegistry
from ukcancel.store import as_text

# KEYS[1] the user's waiting list   KEYS[2] the round-robin ring of users
# ARGV[1] user id   ARGV[2..] command ids to append
# Appends the ids; puts the user on the ring when its list was empty before and the user is not
# on the ring already (a withdrawal can empty a list while its user still waits for a turn).
_PUSH = """
local before = redis.call('LLEN', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
if before == 0 and not redis.call('LPOS', KEYS[2], ARGV[1]) then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return before
"""

# KEYS[1] the round-robin ring of users   KEYS[2] the claims hash (task id -> command id)
# ARGV[1] Celery task id   ARGV[2] key prefix of the per-user lists
# Returns the command this task already holds, else pops the oldest command of the user at the
# head of the ring, records the claim and moves the user to the tail if it has more waiting.
# Returns false when nothing waits. (Per-user list keys are derived from ARGV[2], so this
# script needs a single Redis node, not a cluster.)
_CLAIM = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return held end
local users = redis.call('LLEN', KEYS[1])
for i = 1, users do
  local user = redis.call('LPOP', KEYS[1])
  if not user then return false end
  local list = ARGV[2] .. user
  local id = redis.call('LPOP', list)
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], user) end
  if id then
    redis.call('HSET', KEYS[2], ARGV[1], id)
    return id
  end
end
return false
"""

Dispatch = Callable[[int], None]
PUSH_CHUNK = 1000


class CancelQueue:
    """Enqueues cancel commands and hands them to workers round robin by user.

    Redis keys owned: ``ukcancel:fair:users``, ``ukcancel:fair:q:{user_id}`` and
    ``ukcancel:fair:claims`` (see `ukcancel.keys`).
    """

    def __init__(self, connection: redis.Redis, registry: CommandRegistry, dispatch: Dispatch) -> None:
        self.connection = connection
        self.registry = registry
        self.dispatch = dispatch  # sends n "run the next command" messages to the broker
        self._claim = connection.register_script(_CLAIM)

    def enqueue(self, commands: Sequence[CancelCommand], pipeline: redis.client.Pipeline | None = None) -> None:
        """Store the commands and their places in line in one round trip, then send their turns."""
        pipe = pipeline if pipeline is not None else self.connection.pipeline(transaction=True)
        by_user: dict[str, list[str]] = defaultdict(list)
        for command in commands:
            self.registry.add(command, pipe)
            by_user[command.user_id].append(command.id)
        for user_id, ids in by_user.items():
            # Lua's unpack() takes a few thousand values at most (a 10,000-item batch would fail).
            for start in range(0, len(ids), PUSH_CHUNK):
                chunk = ids[start : start + PUSH_CHUNK]
                # EVAL, not a registered script: redis-py checks a pipeline's registered scripts with
                # SCRIPT EXISTS before every execute, one more round trip per enqueue. The text is
                # sent with the call, so a server that lost its script cache still runs it.
                pipe.eval(_PUSH, 2, keys.fair_queue(user_id), keys.FAIR_USERS, user_id, *chunk)
        pipe.execute()
        self.dispatch(len(commands))

    def claim(self, task_id: str) -> str | None:
        """The command id this Celery task holds or now takes, or None when nothing waits."""
        found = self._claim(keys=[keys.FAIR_USERS, keys.FAIR_CLAIMS], args=[task_id, keys.fair_queue("")])
        return as_text(found) if found is not None else None

    def release(self, task_id: str) -> None:
        """Forget the task's claim once its command is terminal."""
        self.connection.hdel(keys.FAIR_CLAIMS, task_id)

    def remove_waiting(self, command: CancelCommand) -> None:
        """Take a command out of its user's line (it was withdrawn, or its turn could not be sent)."""
        self.connection.lrem(keys.fair_queue(command.user_id), 1, command.id)

    def depth(self) -> dict[str, int]:
        """Waiting commands per user, for metrics and the batch ETA."""
        users = [as_text(u) for u in self.connection.lrange(keys.FAIR_USERS, 0, -1)]
        pipe = self.connection.pipeline(transaction=False)
        for user in users:
            pipe.llen(keys.fair_queue(user))
        return dict(zip(users, pipe.execute()))
