"""Redis streams for pipelines: commands in (``ukcancel:commands``), outcomes out.

A pipeline that already speaks Redis can submit cancel commands without HTTP:

    XADD ukcancel:commands * token <bearer token> job_id 1001 products '["lc","psf"]' request_id r-17

Entry fields:
  token         a bearer token, checked exactly like `Authorization: Bearer` (required)
  job_id        the UKSSDC JobID as a JSON number, e.g. ``1001`` (required)
  products      JSON text (``"all"``, ``["LightCurve","psf"]``) or a comma list (``lc,psf``); the
                bare word ``all`` works too; default "all"
  user_id       act for this UKSSDC user (admin tokens; others only their own), optional
  callback_url  as in the HTTP API, optional
  request_id    any text of the pipeline's, echoed on the accepted entry, optional
Any other field is refused, as an unknown JSON field is by the HTTP API.

The request is loaded by the same `CancellationRequestSchema` as `POST /v1/cancellations` and
submitted through the same `ukcancel.submission.submit`. Then exactly one of:
  - ``ukcancel:commands:accepted`` gets ``entry_id, command_id[, request_id]``;
  - ``ukcancel:deadletter`` gets the entry's fields (the token cut to its recognisable prefix,
    every other secret redacted as the logs redact it, at most 16 fields of at most 512
    characters), ``reason`` (JSON: field -> messages, as in the HTTP problem) and ``entry_id``.
    It keeps about `UKCANCEL_DEADLETTER_MAXLEN` entries (100,000), oldest trimmed.
Publishing, XACK and XDEL happen in one script, in that order (the entry is acknowledged only
once its outcome is written), so an entry delivered twice is published once; the entry is deleted
so tokens do not stay at rest in the stream. With `UKCANCEL_REDIS_MIN_REPLICAS` the accepted
entry is published only once that many replicas hold the command (`WAIT`); an entry not confirmed
in time stays pending and is handled again (the same command, by its reservation).

An entry with more than 16 fields, a value over 16 KiB, more than 64 KiB in all, or job_id /
products JSON nested deeper than 32 levels is dead-lettered at once, with a reason naming the
bound, before anything is decoded. An entry that would pass the user's quota of queued commands
(`ukcancel.quota`) is dead-lettered with reason ``quota``.

Pipelines that must not touch each other's entries each get a stream of their own,
``ukcancel:commands:from:{pipeline}`` (`UKCANCEL_PIPELINE_STREAMS` names them; the consumer reads
them all besides the shared one): Redis ACLs cannot withhold XADD's MAXLEN/MINID trimming, so on
a shared stream any writer could trim the others' unread entries. An entry of a pipeline stream
is known by a qualified id, ``<pipeline>/<entry id>``, in ``entry_id`` of its outcome. The
ACL recipe in docs/operators/security.md gives each pipeline XADD on its own stream and read-only
access to the outcome streams.

Consumers share the group ``ukcancel``. An entry read by a consumer that died before
acknowledging it stays pending; any consumer takes it over with XAUTOCLAIM once it has been idle
for `min_idle_ms`. The command is made at most once per entry: the entry id is a `Reservation`
written in the same transaction as the command.

Results: every command that becomes terminal (completed, or aborted by a withdrawal) is appended
to ``ukcancel:results``, once, by the script that makes it terminal (`ukcancel.command.TRANSITION_LUA`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from marshmallow import ValidationError

from ukcancel import keys, logs, presence
from ukcancel.quota import QuotaExceeded, Quotas
from ukcancel.runtime import Runtime
from ukcancel.schemas import CancellationRequestSchema, submission_policy
from ukcancel.store import ReplicasUnconfirmed, as_text, as_text_dict, confirm_replicas
from ukcancel.submission import Reservation, submit
from ukcancel.token import TOKEN_PREFIX, NotPermitted, Principal

log = logging.getLogger(__name__)

GROUP = keys.COMMAND_STREAM_GROUP
ENVELOPE_FIELDS = ("token", "request_id")
TOKEN_SHOWN = len(TOKEN_PREFIX) + 6  # as much of a token as `ukcancel token list` shows
DELETED_REASON = {"_entry": ["deleted from the stream before it was handled"]}
ACCEPTED_MAXLEN = 100_000

# KEYS[1] the command stream   KEYS[2] the stream to publish to (accepted or dead letters)
# ARGV[1] consumer group   ARGV[2] entry id   ARGV[3] MAXLEN (~) of KEYS[2], 0 for none
# ARGV[4..] field/value pairs to publish
# Publishes only while the entry is still pending in the group (a duplicate delivery, two
# consumers on one entry, publishes nothing twice), then acknowledges and deletes it: the
# acknowledgement comes after the outcome is written, so a failing XADD leaves the entry pending
# instead of acknowledged with no outcome. Returns 1 if published.
_ACK_AND_PUBLISH = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(pending) ~= 'table' or pending.err or #pending == 0 then return 0 end  -- no group: not pending
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
else
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

# Bounds of one entry, checked before anything is decoded: over one, the entry is dead-lettered at
# once with a reason naming it (a request this big is not a cancel command).
MAX_ENTRY_FIELDS = 16
MAX_VALUE_BYTES = 16 * 1024
MAX_ENTRY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
# What a dead letter keeps of an oversized entry: the first fields, each value cut.
LETTER_FIELDS = 16
LETTER_VALUE_CHARS = 512


@dataclass(frozen=True)
class EntryOutcome:
    """What became of one entry: accepted as `command_id`, rejected for `reason`, or left pending."""

    entry_id: str
    command_id: str | None = None
    reason: dict[str, Any] | None = None

    @property
    def pending(self) -> bool:
        return self.command_id is None and self.reason is None


class EntryRejected(Exception):
    def __init__(self, reason: dict[str, Any]) -> None:
        super().__init__(json.dumps(reason))
        self.reason = reason


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def request_from_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The JSON body an entry stands for: the envelope removed, job_id and products decoded.

    Values that do not decode are passed on as text, so the schema names the field and says why.
    """
    body: dict[str, Any] = {name: value for name, value in fields.items() if name not in ENVELOPE_FIELDS}
    if "job_id" in body:
        body["job_id"] = _json_oras_text(body["job_id"])
    if "products" in body:
        body["products"] = _products(body["products"])
    return body


def _json_oras_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def json_depth(text: str) -> int:
    """How deeply `text`'s JSON arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def entry_problem(fields: dict[str, str]) -> dict[str, Any] | None:
    """Why an entry is refused before it is decoded (too many fields, too large, nested too deeply), or None."""
    if len(fields) > MAX_ENTRY_FIELDS:
        return {"_entry": [f"{len(fields)} fields; an entry has at most {MAX_ENTRY_FIELDS}."]}
    total = 0
    for name, value in fields.items():
        size = len(value.encode("utf-8", "surrogatepass"))
        total += size + len(name)
        if size > MAX_VALUE_BYTES:
            return {_field_name(name): [f"{size} bytes; a value has at most {MAX_VALUE_BYTES}."]}
    if total > MAX_ENTRY_BYTES:
        return {"_entry": [f"{total} bytes; an entry has at most {MAX_ENTRY_BYTES}."]}
    for name in ("job_id", "products"):
        if name in fields and json_depth(fields[name]) > MAX_JSON_DEPTH:
            return {name: [f"JSON nested deeper than {MAX_JSON_DEPTH} levels."]}
    return None


def _field_name(name: str) -> str:
    return name if len(name) <= 64 else name[:61] + "..."


def _products(value: str) -> Any:
    text = value.strip()
    if text.startswith(("[", '"')):
        return _json_oras_text(text)
    if text == "all":
        return text
    return [name.strip() for name in text.split(",")]


class CommandStreamConsumer:
    """One consumer of ``ukcancel:commands`` in group ``ukcancel``.

    Redis keys: reads, acknowledges and deletes entries of ``ukcancel:commands``; appends to
    ``ukcancel:commands:accepted`` and ``ukcancel:deadletter``; entry reservations
    ``ukcancel:stream:entry:{entry_id}`` are written by `ukcancel.submission` (see `ukcancel.keys`).
    """

    def __init__(
        self,
        runtime: Runtime,
        name: str | None = None,
        *,
        block_ms: int = 2000,
        min_idle_ms: int = 60_000,
        count: int = 16,
        max_deliveries: int = 5,
    ) -> None:
        self.runtime = runtime
        self.connection: redis.Redis = runtime.connection
        self.name = name or default_consumer_name()
        # A read never blocks longer than a heartbeat, so a waiting consumer still shows as live.
        self.block_ms = min(block_ms, int(presence.HEARTBEAT_SECONDS * 1000))
        self.min_idle_ms = min_idle_ms
        self.count = count
        self.max_deliveries = max_deliveries
        self.schema = CancellationRequestSchema()
        self._ack_and_publish = self.connection.register_script(_ACK_AND_PUBLISH)
        self._own_pending_done = False
        self.quotas = Quotas(self.connection, runtime.settings)
        self.deadletter_maxlen = runtime.settings.deadletter_maxlen
        # The shared stream, then one per pipeline (`UKCANCEL_PIPELINE_STREAMS`): stream key -> the
        # prefix that qualifies its entry ids ("" for the shared stream, "<pipeline>/" otherwise).
        self.streams = {keys.COMMAND_STREAM: ""}
        for pipeline in runtime.settings.pipeline_streams:
            self.streams[keys.pipeline_stream(pipeline)] = f"{pipeline}/"

    def locate(self, entry_id: str) -> tuple[str, str]:
        """(stream key, the id within it) of a qualified entry id ("1-0", or "<pipeline>/1-0")."""
        pipeline, _, raw = entry_id.rpartition("/")
        return (keys.pipeline_stream(pipeline) if pipeline else keys.COMMAND_STREAM), raw

    # -- the loop -------------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the group (and stream) if needed, from the stream's start: entries added before
        the first consumer ran are handled too."""
        for stream in self.streams:
            try:
                self.connection.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, stop: threading.Event) -> None:
        """Handle entries until `stop` is set; Redis outages are waited out, not fatal."""
        delay = 0.5
        beat = presence.Publisher(self.connection, presence.STREAM_CONSUMER, self.runtime.settings,
                                  name=f"{presence.STREAM_CONSUMER}:{self.name}")
        while not stop.is_set():
            try:
                self.ensure_group()
                while not stop.is_set():
                    beat.beat()
                    self.step()
                    delay = 0.5
            except redis.RedisError as exc:
                log.warning("command stream: Redis error, retrying in %.1f s: %s", delay, exc)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        try:
            presence.forget(self.connection, beat.name)
        except redis.RedisError:  # the entry ages out of the live window
            pass

    @contextlib.contextmanager
    def running(self) -> Iterator[CommandStreamConsumer]:
        """Run the loop in a background thread for the duration of the `with` block."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name=f"ukcancel-stream-{self.name}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(self.block_ms / 1000 + 5)

    def step(self) -> list[EntryOutcome]:
        """One round: this consumer's own unacknowledged entries (after a restart), entries idle
        too long at other consumers, then new entries (waiting up to `block_ms` for them)."""
        handled: list[EntryOutcome] = []
        while not self._own_pending_done:
            own = self._read("0", block=None)
            handled += self.handle_all(own)
            self._own_pending_done = len(own) < self.count
        handled += self.reclaim()
        handled += self.handle_all(self._read(">", block=self.block_ms))
        return handled

    def reclaim(self) -> list[EntryOutcome]:
        """Take over entries pending longer than `min_idle_ms` (their consumer died) and handle them."""
        handled: list[EntryOutcome] = []
        for stream, prefix in self.streams.items():
            start = "0-0"
            while True:
                reply = self.connection.xautoclaim(
                    stream, GROUP, self.name, self.min_idle_ms, start_id=start, count=self.count
                )
                start, entries = as_text(reply[0]), reply[1]
                for entry_id in reply[2] if len(reply) > 2 else []:
                    # Redis 7 has already dropped these from the pending list; say so, once.
                    handled.append(self._report_deleted(prefix + as_text(entry_id)))
                for entry_id, fields in entries:
                    entry_id = prefix + as_text(entry_id)
                    if fields is None:  # how Redis before 7 reports a deleted entry: still pending
                        handled.append(self._reject(entry_id, {}, DELETED_REASON))
                    else:
                        handled.append(self._handle_reclaimed(entry_id, as_text_dict(fields)))
                if start == "0-0":
                    break
        return handled

    def _read(self, from_id: str, block: int | None) -> list[tuple[str, dict[str, str]]]:
        reply = self.connection.xreadgroup(
            GROUP, self.name, {stream: from_id for stream in self.streams}, count=self.count, block=block
        )
        out: list[tuple[str, dict[str, str]]] = []
        for stream, entries in reply or []:
            prefix = self.streams.get(as_text(stream), "")
            for entry_id, fields in entries:
                if fields:  # own pending history lists deleted entries with no fields; they were acked
                    out.append((prefix + as_text(entry_id), as_text_dict(fields)))
        return out

    def handle_all(self, entries: list[tuple[str, dict[str, str]]]) -> list[EntryOutcome]:
        return [self._handle_guarded(entry_id, fields) for entry_id, fields in entries]

    def _handle_guarded(self, entry_id: str, fields: dict[str, str]) -> EntryOutcome:
        try:
            return self.handle(entry_id, fields)
        except redis.RedisError:
            raise  # the loop waits Redis out; the entry stays pending
        except Exception:
            # A defect must not stop the consumer; the entry stays pending, is retried after
            # `min_idle_ms`, and is dead-lettered after `max_deliveries`.
            log.exception("command stream: entry %s failed; it stays pending", entry_id)
            return EntryOutcome(entry_id)

    # -- one entry ------------------------------------------------------------------------------
    def handle(self, entry_id: str, fields: dict[str, str]) -> EntryOutcome:
        """Accept or dead-letter one entry; leave it pending (for a retry) when the broker is down."""
        with logs.context(entry_id=entry_id, request_id=fields.get("request_id")):
            return self._handle(entry_id, fields)

    def _handle(self, entry_id: str, fields: dict[str, str]) -> EntryOutcome:
        too_big = entry_problem(fields)
        if too_big is not None:
            return self._reject(entry_id, fields, too_big)
        try:
            caller, request = self.validate(fields)
            user_id = caller.acting_for(request.get("user_id"))
            logs.bind(user=user_id)
            if self.runtime.connection.exists(keys.stream_entry(entry_id)) == 0:  # a redelivery made none
                self.quotas.check_commands(user_id)
            submitted = submit(self.runtime, caller, request, Reservation(keys.stream_entry(entry_id)))
        except EntryRejected as rejected:
            return self._reject(entry_id, fields, rejected.reason)
        except NotPermitted as exc:  # acting for another user without an admin token
            return self._reject(entry_id, fields, {"user_id": [str(exc)]})
        except QuotaExceeded as exc:
            return self._reject(entry_id, fields, {"quota": [exc.detail]})
        settings = self.runtime.settings
        try:
            # Published only once a replica holds the command: an `accepted` entry survives a failover.
            confirm_replicas(self.connection, settings.redis_min_replicas, settings.redis_replica_timeout_ms)
        except ReplicasUnconfirmed as exc:
            # Left pending: retried from its reservation (the same command) after `min_idle_ms`.
            log.warning("command stream: entry %s left pending, not confirmed by a replica: %s", entry_id, exc)
            return EntryOutcome(entry_id)
        log.info("command stream: entry %s accepted as command %s", entry_id, submitted.command.id,
                 extra={"command_id": submitted.command.id, "user": submitted.command.user_id})
        accepted = {"entry_id": entry_id, "command_id": submitted.command.id}
        if fields.get("request_id"):
            accepted["request_id"] = fields["request_id"]
        self._publish(entry_id, keys.ACCEPTED_STREAM, ACCEPTED_MAXLEN, accepted)
        return EntryOutcome(entry_id, command_id=submitted.command.id)

    def validate(self, fields: dict[str, str]) -> tuple[Principal, dict[str, Any]]:
        """The caller and the loaded request, or `EntryRejected` with messages keyed by field."""
        token = fields.get("token")
        if not token:
            raise EntryRejected({"token": ["Missing data for required field."]})
        record = self.runtime.tokens.verify(token)
        if record is None:
            raise EntryRejected({"token": ["The token is unknown or revoked."]})
        caller = Principal.from_token(record)
        try:
            with submission_policy(self.runtime.settings):
                request = self.schema.load(request_from_fields(fields))
        except ValidationError as exc:
            raise EntryRejected(_messages(exc.messages)) from None
        return caller, request

    def _handle_reclaimed(self, entry_id: str, fields: dict[str, str]) -> EntryOutcome:
        deliveries = self._deliveries(entry_id)
        if deliveries > self.max_deliveries:
            # Taken over this often, it keeps failing in a way a retry does not cure: stop retrying.
            return self._reject(entry_id, fields, {"_entry": [f"not handled after {deliveries - 1} deliveries"]})
        return self._handle_guarded(entry_id, fields)

    def _deliveries(self, entry_id: str) -> int:
        stream, raw = self.locate(entry_id)
        rows = self.connection.xpending_range(stream, GROUP, min=raw, max=raw, count=1)
        return int(rows[0]["times_delivered"]) if rows else 0

    def _reject(self, entry_id: str, fields: dict[str, str], reason: dict[str, Any]) -> EntryOutcome:
        letter = dead_letter(fields)
        letter["reason"] = logs.redact(json.dumps(reason, separators=(",", ":")))
        letter["entry_id"] = entry_id
        self._publish(entry_id, keys.DEADLETTER_STREAM, self.deadletter_maxlen, letter)
        log.info("command stream: entry %s dead-lettered: %s", entry_id, letter["reason"])
        return EntryOutcome(entry_id, reason=reason)

    def _report_deleted(self, entry_id: str) -> EntryOutcome:
        reason = json.dumps(DELETED_REASON, separators=(",", ":"))
        self.connection.xadd(keys.DEADLETTER_STREAM, {"reason": reason, "entry_id": entry_id},
                             maxlen=self.deadletter_maxlen, approximate=True)
        log.warning("command stream: entry %s was deleted before it was handled", entry_id)
        return EntryOutcome(entry_id, reason=DELETED_REASON)

    def _publish(self, entry_id: str, stream: str, maxlen: int, fields: dict[str, str]) -> None:
        pairs = [item for pair in fields.items() for item in pair]
        source, raw = self.locate(entry_id)
        self._ack_and_publish(keys=[source, stream], args=[GROUP, raw, maxlen, *pairs])


def dead_letter(fields: dict[str, str]) -> dict[str, str]:
    """What a dead letter keeps of an entry: at most `LETTER_FIELDS` fields, each value cut to
    `LETTER_VALUE_CHARS`, the token to its recognisable prefix and every secret redacted as the
    logs redact it (tokens, bearer credentials, callback secrets, URL passwords)."""
    letter: dict[str, str] = {}
    for name, value in list(fields.items())[:LETTER_FIELDS]:
        if name in ("reason", "entry_id"):
            continue  # the letter's own fields
        if name == "token":
            value = value[:TOKEN_SHOWN] + "..."  # never the whole bearer token
        elif len(value) > LETTER_VALUE_CHARS:
            value = value[:LETTER_VALUE_CHARS] + f"... ({len(value)} characters)"
        letter[logs.redact(_field_name(name))] = logs.redact(value) if name != "token" else value
    if len(fields) > LETTER_FIELDS:
        letter["_omitted_fields"] = str(len(fields) - LETTER_FIELDS)
    return letter


def recent_dead_letters(connection: redis.Redis, count: int = 100) -> list[dict[str, Any]]:
    """The newest `count` dead letters, newest first: id, reason (its JSON decoded, or the text
    when it is not JSON) and the entry's other fields."""
    letters = []
    for entry_id, entry in connection.xrevrange(keys.DEADLETTER_STREAM, count=count):
        data = {as_text(k): as_text(v) for k, v in entry.items()}
        try:
            reason = json.loads(data.get("reason", ""))
        except ValueError:
            reason = data.get("reason")
        letters.append({"id": as_text(entry_id), "reason": reason,
                        "fields": {k: v for k, v in data.items() if k != "reason"}})
    return letters


def _messages(messages: Any) -> dict[str, Any]:
    return messages if isinstance(messages, dict) else {"_schema": messages}


