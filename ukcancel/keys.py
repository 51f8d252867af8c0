"""The Redis key layout of ukssdc-cancel: every key the service writes, in one place.

All keys start with ``ukcancel:`` so one Redis database can be shared with other tenants.
The service's own records are the source of truth; Celery's result backend is not used.

Commands (`ukcancel.command.CommandRegistry`)
    ``ukcancel:cmd:{id}``                 hash, one cancel command: job_id, user_id, products
                                          (JSON), state, attempts, last_error, next_attempt_at
                                          (epoch seconds, while due again), created_at,
                                          updated_at (epoch seconds, to the microsecond), result
                                          (JSON tuple), server_ok, submitted_by, history, batch_id,
                                          callback_url, callback (JSON delivery outcome) and the
                                          worker's progress fields (resolved, settled, ambiguous,
                                          unlisted; settled is dropped on completion, when the
                                          result holds it). No id field: the id is the key's suffix.
                                          history: one entry per state change, comma-separated,
                                          "<code><microseconds since created_at>" with codes q
                                          queued, r running, t retrying, c completed, a aborted,
                                          e.g. "q0,r1502,c48211" (records written by earlier
                                          versions hold a JSON list and an id field; both are
                                          still read: GET shows them). Small values keep the hash a listpack.
                                          Expires `result_ttl_seconds` after creation, renewed
                                          when it becomes terminal.
    ``ukcancel:user:{user_id}:cmds``      sorted set, command ids of one UKSSDC user scored by
                                          created_at; entries of expired commands are pruned lazily
                                          (by an insert, at most once a minute per index and
                                          process; the listing skips ids whose record is gone).
    ``ukcancel:cmds``                     sorted set, every command id scored by created_at (an
                                          admin's listing across users); pruned like the above.
    ``ukcancel:events:{id}``              pub/sub channel, a state name on every transition (long poll).
    ``ukcancel:callbacks:due``            sorted set, the callback outbox: command id -> when its callback
                                          is next due to be sent. The terminal transition puts a command
                                          with a callback URL here in the same script; the reconciler's
                                          sweep sends what is due (moving it on by a delivery lease first,
                                          so a delivery lost with its worker is sent again); the outcome
                                          of a delivery takes it out, or moves it to its retry time.

The schedule (`ukcancel.schedule.Schedule`): the service's Redis, not the broker, decides what runs.
A Celery message is an anonymous turn; a turn claims, in this order, an expired lease, a due
command, then the oldest waiting command of the next user in the round-robin ring.
    ``ukcancel:fair:users``               list, round-robin ring of user ids with waiting commands.
    ``ukcancel:fair:q:{user_id}``         list, that user's waiting command ids, oldest first.
    ``ukcancel:fair:jump``                string with expiry (a day), the newcomer mark: "ahead" while a user
                                          whose line was empty has been put at the head of the ring,
                                          "served" from its claim until the next claim from the ring;
                                          while it is set, newcomers join at the tail.
    ``ukcancel:fair:sequence``            string, how many commands have been claimed from the ring.
    ``ukcancel:fair:last_served:{user_id}`` string with expiry (a day), that count when the user was
                                          last served from the ring: a user served within the last
                                          two claims per user on the ring joins at the tail.
    ``ukcancel:due``                      sorted set, command id -> epoch seconds it is due again
                                          (retries, and commands that found the fleet busy).
    ``ukcancel:leases``                   sorted set, command id -> lease expiry (epoch seconds) of
                                          each claimed command; renewed by the worker running it,
                                          taken over by the next turn once expired.
    ``ukcancel:lease:holders``            hash, command id -> the holder of its lease (the turn's
                                          Celery task id); only the holder renews or releases it.
    ``ukcancel:turns:waiting``            sorted set, turns that arrived and wait for a fleet permit ->
                                          until when at most (so the reconciler does not send more
                                          while a permit is near; a dead worker's entry lapses).
    ``ukcancel:turns:on_their_way``       string, turns sent and not yet started, as the schedule
                                          counts them (a turn's first claim takes one off); set from
                                          the broker's own count by the reconciler every tick.
    Leaving ``running`` (retry later, complete, release) and entering it are single scripts that
    check the lease holder: a run whose lease was taken over changes nothing.
    ``ukcancel:reconciler``               string with expiry, the name of the one reconciler that
                                          acts now (`ukcancel.reconciler.Reconciler`).

Batches (`ukcancel.batch.BatchRegistry`)
    ``ukcancel:batch:{id}``               hash: id, user_id, submitted_by, created_at, total, state
                                          (expanding, running, failed), error, and for `all_active`
                                          the expansion's progress: jobs (job id -> products still to
                                          check, JSON), found (job id -> active products, JSON),
                                          attempts.
                                          Expires `result_ttl_seconds` after creation.
    ``ukcancel:batch:{id}:items``         list, the batch's command ids in item order.
    ``ukcancel:user:{user_id}:batches``   sorted set, batch ids scored by created_at.
    ``ukcancel:batches:expanding``        sorted set, `all_active` batch id -> the time by which its
                                          expansion should be heard from again (each step moves it
                                          on); the reconciler resends an expansion past it.
    ``ukcancel:events:batch:{id}``        pub/sub channel, notified when an item becomes terminal and
                                          when an `all_active` expansion ends (long poll).

Jobs and their product states as last read from the UKSSDC (`ukcancel.jobs.JobCache`)
    ``ukcancel:jobs:{user_id}``           hash: jobs (JSON list of {job_id, name, submitted, products,
                                          flags: the product flags the row carried at all} as
                                          listOldJobs.php listed them), listed_at, refreshed_at
                                          (epoch seconds), error (the listing was refused, or the
                                          refresh gave up), refused (listOldJobs.php's own ERROR text
                                          when it answered OK 0). Expires a day after the last write.
    ``ukcancel:jobs:{user_id}:job:{job_id}``  hash: states (JSON long name -> [code, text], as
                                          checkProductStatus.php said), read_at, error. Re-read only
                                          once older than `job_status_ttl_seconds`, and never again once
                                          every product is final. Expires a day after the last write.
    ``ukcancel:jobs:{user_id}:refresh``   string with expiry: a refresh of that user's jobs is asked for
                                          or under way (one at a time; renewed by the worker doing it).
    ``ukcancel:jobs:{user_id}:listing``   string with expiry (the holder): a worker is calling
                                          listOldJobs.php for that user ("all", all_active; single flight:
                                          the others wait for its listing instead of asking too).
    ``ukcancel:events:jobs:{user_id}``    pub/sub channel, "refreshed" when a refresh ends (long poll),
                                          "listed" when a worker saved a new listing of the user's jobs.

Plans (`ukcancel.plans.PlanRegistry`): what a selection would cancel, computed from fresh states.
    ``ukcancel:plan:{id}``                hash: id, user_id, submitted_by, created_at, state
                                          (computing, ready, failed), selection (JSON), pairs (JSON list
                                          of {job_id, name, products}), left_out (JSON list of {job_id,
                                          name, reason}), computed_at, expires_at, error, batch_id (set
                                          once, by the first apply). Expires `result_ttl_seconds` after
                                          creation.
    ``ukcancel:plans:waiting:{user_id}``  set, plan ids waiting for that user's refresh to end.
    ``ukcancel:user:{user_id}:plans``     sorted set, that user's plan ids scored by created_at: `GET
                                          /v1/plans` (a plan named by the start of its id) and the
                                          plans-per-hour quota (`ukcancel.quota`); entries older than
                                          the records' TTL (an hour at least) are dropped on add.
    ``ukcancel:events:plan:{id}``         pub/sub channel, the plan's state once computed (long poll).

Tokens (`ukcancel.token.TokenRegistry`)
    ``ukcancel:token:{sha256}``           hash: name, user_id, admin, created_at, callback_secret.
                                          Only the SHA-256 of a token is stored.
    ``ukcancel:tokens``                   hash, token name -> sha256 (listing and revocation).

Submission (`ukcancel.submission`): reservations, each naming at most one command; written in the
same transaction as the command, expiring `result_ttl_seconds` after it.
    ``ukcancel:idem:{token}:{key}``       string, "command id|body digest": an Idempotency-Key of
                                          the token named {token} (scoped per token).
    ``ukcancel:stream:entry:{entry_id}``  string, "command id|": the command made from that entry
                                          of ``ukcancel:commands``, so a redelivery makes no second.

Quotas (`ukcancel.quota.Quotas`; the other quotas read the keys above)
    ``ukcancel:polls:{user_id}``          string with expiry, long polls the user holds now.

The web console's sessions (`ukcancel.sessions.ConsoleSessions`, for `ukcancel.service.console`)
    ``ukcancel:console:session:{id}``     string with expiry (`console_session_seconds`), the token
                                          name of a signed-in console session; the session cookie
                                          names the id. Sign-out deletes it, which ends every copy
                                          of that cookie.

Metrics (`ukcancel.metrics.StoreCollector`)
    ``ukcancel:metrics:commands``         string with expiry (`metrics_cache_seconds`), JSON list of
                                          [state, result status, count]: the commands-by-state
                                          tally every API process answers /metrics from.
    ``ukcancel:metrics:lock``             string with expiry, held by the one process counting it.

HTTP API rate limit (`ukcancel.service.rate_limit`)
    ``LIMITS:LIMITER/ukcancel-api/...``   Flask-Limiter's fixed-window counters, one per token name
                                          (``token:{name}``) or, unauthenticated, per client address.

Fleet toward the UKSSDC (`ukcancel.fleet.FleetGate`; heartbeats: `ukcancel.fleet.record_heartbeat`)
    ``ukcancel:fleet:config``             hash, run-time overrides: rate_per_second, max_in_flight.
    ``ukcancel:fleet:inflight``           sorted set, permit ids scored by their expiry time.
    ``ukcancel:fleet:paused_until``       string, epoch seconds before which no call is made
                                          (a 429/503 Retry-After pauses the whole fleet).
    ``ukcancel:fleet:breaker``            hash: state, failures, opened_at; the circuit breaker.
    ``ukcancel:fleet:probe``              string "<permit id>|<until, epoch s>", held by the one half-open
                                          probe (its time decides; the key also expires then).
    ``ukcancel:fleet:calls``              sorted set, permit id -> when it was granted (moved to when
                                          its call was sent): the sliding window of the rate limit.
    ``ukcancel:fleet:next_due``           string with expiry, epoch seconds the last permit was due on the
                                          pacing schedule that spreads calls over the window (the next
                                          is due one interval later, at the rate in force then).
    ``ukcancel:workers``                  sorted set, worker host names scored by last heartbeat.

High availability and upgrades (`ukcancel.store`, `ukcancel.failover`, `ukcancel.layout`)
    ``ukcancel:replicas:probe``           string, a counter each `confirm_replicas` increments before
                                          its WAIT (WAIT counts the writes of its own connection).
    ``ukcancel:master:run_id``            string, the run_id of the Redis master the fleet last saw;
                                          a process that finds another master pauses the fleet gate
                                          for one rate window before setting it.
    ``ukcancel:layout``                   hash: version (the key layout's number: 1 for 0.1.0, 2 for
                                          0.2.0, 3 from 0.3.0), release (the ukssdc-cancel version
                                          that wrote it), migrated_at (epoch seconds). Absent: a
                                          layout of before 0.3.0, or an empty database.
    ``ukcancel:layout:lock``              string with expiry, held by the one process migrating the
                                          layout (the others wait for the version to change).
    ``ukcancel:fair:claims``              hash of 0.1.0 (layout 1), Celery task id -> command id; the
                                          migration turns each unfinished one into an expired lease and
                                          deletes the hash. Never written since 0.2.0.
Presence of every process (`ukcancel.presence`)
    ``ukcancel:processes``                sorted set, process name (``role@host:pid``) scored by its
                                          last heartbeat; API, workers and stream consumers alike.
    ``ukcancel:processes:info``           hash, process name -> JSON: role, version, and the settings
                                          that must agree across processes (secrets as a SHA-256).

Streams (`ukcancel.stream`)
    ``ukcancel:commands``                 stream that pipelines XADD commands to (consumer group
                                          ``ukcancel``): token, job_id (JSON number), products
                                          (JSON text, or a comma list), optional user_id,
                                          callback_url, request_id. An entry is deleted once
                                          handled, so tokens do not stay at rest.
    ``ukcancel:commands:from:{pipeline}``  stream, as ``ukcancel:commands`` for one pipeline named in
                                          `UKCANCEL_PIPELINE_STREAMS` (so an ACL can confine it).
    ``ukcancel:commands:accepted``        stream, capped at ~100,000: entry_id, command_id,
                                          request_id (when given).
    ``ukcancel:deadletter``               stream: the rejected entry's fields (token cut to its
                                          prefix, other secrets redacted, at most 16 fields of 512
                                          characters), reason (JSON validation messages), entry_id
                                          (``<pipeline>/<id>`` for a pipeline stream's entry).
                                          Capped at ~`deadletter_maxlen` (100,000).
    ``ukcancel:results``                  stream, capped at ~100,000: command_id, user_id, job_id,
                                          state, result (JSON), error (when there is one); one
                                          entry per terminal command, appended by the script that
                                          makes it terminal (`ukcancel.command.TRANSITION_LUA`).
"""

from __future__ import annotations

PREFIX = "ukcancel"


def command(command_id: str) -> str:
    return f"{PREFIX}:cmd:{command_id}"


def user_commands(user_id: str) -> str:
    return f"{PREFIX}:user:{user_id}:cmds"


ALL_COMMANDS = f"{PREFIX}:cmds"


def command_events(command_id: str) -> str:
    return f"{PREFIX}:events:{command_id}"


FAIR_USERS = f"{PREFIX}:fair:users"
FAIR_JUMP = f"{PREFIX}:fair:jump"
FAIR_SEQUENCE = f"{PREFIX}:fair:sequence"
DUE = f"{PREFIX}:due"
LEASES = f"{PREFIX}:leases"
LEASE_HOLDERS = f"{PREFIX}:lease:holders"
RECONCILER_LOCK = f"{PREFIX}:reconciler"
TURNS_ON_THEIR_WAY = f"{PREFIX}:turns:on_their_way"
TURNS_WAITING = f"{PREFIX}:turns:waiting"


def fair_queue(user_id: str) -> str:
    return f"{PREFIX}:fair:q:{user_id}"


def fair_last_served(user_id: str) -> str:
    return f"{PREFIX}:fair:last_served:{user_id}"


def batch(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_items(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:items"


def user_batches(user_id: str) -> str:
    return f"{PREFIX}:user:{user_id}:batches"


EXPANDING_BATCHES = f"{PREFIX}:batches:expanding"


def batch_events(batch_id: str) -> str:
    return f"{PREFIX}:events:batch:{batch_id}"


def jobs(user_id: str) -> str:
    return f"{PREFIX}:jobs:{user_id}"


def job_states(user_id: str, job_id: int) -> str:
    return f"{PREFIX}:jobs:{user_id}:job:{job_id}"


def jobs_refresh(user_id: str) -> str:
    return f"{PREFIX}:jobs:{user_id}:refresh"


def jobs_listing(user_id: str) -> str:
    return f"{PREFIX}:jobs:{user_id}:listing"


def jobs_events(user_id: str) -> str:
    return f"{PREFIX}:events:jobs:{user_id}"


def plan(plan_id: str) -> str:
    return f"{PREFIX}:plan:{plan_id}"


def plans_waiting(user_id: str) -> str:
    return f"{PREFIX}:plans:waiting:{user_id}"


def user_plans(user_id: str) -> str:
    return f"{PREFIX}:user:{user_id}:plans"


def user_polls(user_id: str) -> str:
    return f"{PREFIX}:polls:{user_id}"


def plan_events(plan_id: str) -> str:
    return f"{PREFIX}:events:plan:{plan_id}"


def token(digest: str) -> str:
    return f"{PREFIX}:token:{digest}"


TOKENS = f"{PREFIX}:tokens"


def idempotency(token_name: str, key: str) -> str:
    return f"{PREFIX}:idem:{token_name}:{key}"


def stream_entry(entry_id: str) -> str:
    return f"{PREFIX}:stream:entry:{entry_id}"


API_LIMITER_PREFIX = "ukcancel-api"


def console_session(session_id: str) -> str:
    return f"{PREFIX}:console:session:{session_id}"


METRICS_COMMANDS = f"{PREFIX}:metrics:commands"
METRICS_LOCK = f"{PREFIX}:metrics:lock"

FLEET_CONFIG = f"{PREFIX}:fleet:config"
FLEET_INFLIGHT = f"{PREFIX}:fleet:inflight"
FLEET_PAUSED_UNTIL = f"{PREFIX}:fleet:paused_until"
FLEET_BREAKER = f"{PREFIX}:fleet:breaker"
FLEET_PROBE = f"{PREFIX}:fleet:probe"
FLEET_CALLS = f"{PREFIX}:fleet:calls"
FLEET_NEXT_DUE = f"{PREFIX}:fleet:next_due"
WORKERS = f"{PREFIX}:workers"
PROCESSES = f"{PREFIX}:processes"
PROCESSES_INFO = f"{PREFIX}:processes:info"

REPLICA_PROBE = f"{PREFIX}:replicas:probe"
MASTER_RUN_ID = f"{PREFIX}:master:run_id"
LAYOUT = f"{PREFIX}:layout"
LAYOUT_LOCK = f"{PREFIX}:layout:lock"
# 0.1.0's claims (task id -> command id), read once by the migration to layout 2 (`ukcancel.layout`).
LEGACY_FAIR_CLAIMS = f"{PREFIX}:fair:claims"

COMMAND_STREAM = f"{PREFIX}:commands"
COMMAND_STREAM_GROUP = PREFIX
ACCEPTED_STREAM = f"{PREFIX}:commands:accepted"


def pipeline_stream(pipeline: str) -> str:
    return f"{PREFIX}:commands:from:{pipeline}"
DEADLETTER_STREAM = f"{PREFIX}:deadletter"
RESULTS_STREAM = f"{PREFIX}:results"
CALLBACK_OUTBOX = f"{PREFIX}:callbacks:due"
