"""Every setting of the service, read from the environment in this one place.

`REDIS_URL`, `CELERY_BROKER_URL` and `UKSSDC_BASE_URL` keep the names operators expect from
Redis and Celery deployments; every other setting carries the `UKCANCEL_` prefix. An invalid
value stops start-up with a `SettingsError` that names the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PRODUCTION_BASE_URL = "https://www.swift.ac.uk/user_objects"
# Bounds of a UKSSDC reply (`ukcancel.worker.ukssdc`), shared with the client's own defaults.
DEFAULT_RETRY_AFTER_MAX_SECONDS = 900.0
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024


class SettingsError(ValueError):
    """A setting in the environment has a value the service cannot run with."""


# Settings whose value is a secret: an error names the variable, never the value.
SECRET_VARIABLES = frozenset({"UKCANCEL_CONSOLE_SECRET", "UKCANCEL_TOKEN"})
# Settings whose value is a URL that may carry a password: shown with the password masked.
URL_VARIABLES = frozenset({"REDIS_URL", "CELERY_BROKER_URL"})


def shown_value(variable: str, raw: str) -> str:
    """How an invalid value is quoted in an error: secrets not at all, URLs without their password."""
    if variable in SECRET_VARIABLES:
        return f"(a value of {len(raw)} characters, not shown)"
    if variable in URL_VARIABLES:
        parts = urlsplit(raw)
        try:
            password = parts.password
        except ValueError:
            password = None
        if password:
            netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
            return repr(parts._replace(netloc=netloc).geturl())
    return repr(raw)


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


# The lowest fleet rate accepted anywhere (settings, `ukcancel fleet --rate`, the console): one
# UKSSDC call in any 1,000 s. The gate is exact at any rate down to it (`ukcancel.fleet.rate_window`).
MIN_FLEET_RATE_PER_SECOND = 0.001


def _fleet_rate(raw: str) -> float:
    value = _positive_float(raw)
    if value < MIN_FLEET_RATE_PER_SECOND:
        raise ValueError(f"must be at least {MIN_FLEET_RATE_PER_SECOND} (calls per second)")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a non-negative number")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port, 1-65535")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _address(raw: str) -> str:
    import ipaddress

    ipaddress.ip_address(raw)  # ValueError names it
    return raw


def _pipeline_names(raw: str) -> tuple[str, ...]:
    import re

    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
            raise ValueError("must be a comma-separated list of pipeline names (a-z, 0-9, _ and -)")
    return names


def _log_format(raw: str) -> str:
    if raw not in ("text", "json"):
        raise ValueError('must be "text" or "json"')
    return raw


def _directory(raw: str) -> str:
    if not os.path.isdir(raw):
        raise ValueError("must be an existing directory")
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return raw.rstrip("/")


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return raw


def _sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    sentinels = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or "/" in host or " " in host:
            raise ValueError("must be a comma-separated list of host:port")
        sentinels.append((host.strip("[]"), _port(port)))
    if not sentinels:
        raise ValueError("must name at least one host:port")
    return tuple(sentinels)


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be a non-negative integer")
    return value


def _broker_url(raw: str) -> str:
    if not urlsplit(raw).scheme:
        raise ValueError("must be a broker URL such as redis://... or amqp://...")
    return raw


def _host_list(raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        if "/" in host or " " in host:
            raise ValueError("must be a comma-separated list of host names (optionally host:port)")
    return hosts


def sentinel_broker_url(redis_url: str, sentinels: tuple[tuple[str, int], ...]) -> str:
    """kombu's `sentinel://` URL: one per Sentinel, `;`-separated, each with the store's database
    and credentials (kombu passes them to the master it finds)."""
    parts = urlsplit(redis_url)
    credentials = parts.netloc.rpartition("@")[0]
    auth = f"{credentials}@" if credentials else ""
    database = parts.path.strip("/") or "0"
    return ";".join(f"sentinel://{auth}{host}:{port}/{database}" for host, port in sentinels)


def _secret(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters (e.g. `python3 -c 'import secrets; print(secrets.token_hex(32))'`)")
    return raw


def _rate_limit(raw: str) -> str:
    # Parsed by `limits`, the library that enforces it, so both agree on the grammar.
    from limits import parse_many

    parse_many(raw)
    return raw


@dataclass(frozen=True)
class Settings:
    """The service's configuration; `Settings.from_env()` is the only reader of the environment."""

    redis_url: str | None = None
    broker_url: str | None = None
    # Redis high availability (`ukcancel.store`): the Sentinels that know the master, its name
    # there, and the Sentinels' own password; with them `redis_url` gives only database and
    # credentials. `redis_min_replicas` replicas must confirm (WAIT) an accepted write before it
    # is reported, within `redis_replica_timeout_ms`.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_min_replicas: int = 0
    redis_replica_timeout_ms: int = 1000
    ukssdc_base_url: str = PRODUCTION_BASE_URL
    ukssdc_api_version: str = "1.12"
    ukssdc_connect_timeout_seconds: float = 5.0
    ukssdc_timeout_seconds: float = 30.0
    # The whole UKSSDC call, wall clock (not per socket read); unset: connect + read timeout,
    # which is also the most allowed (the fleet's permit lease covers that long).
    ukssdc_deadline_seconds: float | None = None
    ukssdc_max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    # The longest Retry-After honoured; a longer (or unreadable) one pauses nobody.
    retry_after_max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_delay_seconds: float = 300.0
    result_ttl_seconds: int = 7 * 24 * 3600
    max_wait_seconds: int = 60
    broker_visibility_timeout_seconds: int = 3600
    fleet_rate_per_second: float = 2.0
    fleet_max_in_flight: int = 4
    fleet_max_wait_seconds: float = 2.0
    breaker_failure_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    api_rate_limit: str = "600 per minute"
    callback_allowed_hosts: tuple[str, ...] = ()
    callback_max_attempts: int = 5
    worker_concurrency: int = 8
    fleet_guard_seconds: float = 0.04
    # Dispatch (`ukcancel.schedule`, `ukcancel.reconciler`): turns kept going while work waits, how
    # long a claimed command's lease lasts without renewal, how often the reconciler looks.
    dispatch_lanes: int = 6
    lease_seconds: float = 10.0
    reconcile_seconds: float = 0.5
    expansion_timeout_seconds: float = 60.0  # an all_active expansion not heard from this long is resent
    metrics_multiproc_dir: str | None = None
    # Jobs and plans (`ukcancel.jobs`, `ukcancel.plans`): how old a job's product states may be
    # before a worker reads them again (the UKSSDC asks for no more than ~one poll per 10 s), and
    # how long a computed plan may be applied.
    job_status_ttl_seconds: float = 10.0
    plan_ttl_seconds: float = 300.0
    # The web console (`ukcancel.service.console`): the key its session cookies are signed with.
    # No default: without it the console is off.
    console_secret: str | None = field(default=None, repr=False)
    # Plain-HTTP development only: the console's cookie without the Secure flag.
    console_insecure_cookie: bool = False
    # How long a console sign-in lasts (its server-side session expires then; sign-out ends it).
    console_session_seconds: int = 12 * 3600
    # Per-user quotas (`ukcancel.quota`): commands waiting in the user's line, batches and plans
    # created in the last hour, long polls held at once. Over one: 429 naming the limit.
    quota_queued_commands: int = 20_000
    quota_batches_per_hour: int = 100
    quota_plans_per_hour: int = 600
    quota_long_polls: int = 10
    # /metrics: a bearer token a scraper must send (unset: open), and how long the store's
    # gauges are reused between scrapes (one computation per period, whatever the scrape rate).
    metrics_token: str | None = field(default=None, repr=False)
    metrics_cache_seconds: float = 15.0
    # The dead-letter stream keeps about this many entries (oldest trimmed).
    deadletter_maxlen: int = 100_000
    # Pipelines with a command stream of their own (`ukcancel:commands:from:{name}`), for ACLs.
    pipeline_streams: tuple[str, ...] = ()
    # Log lines of every process: "text" or "json" (one object per line, `ukcancel.logs`).
    log_format: str = "text"
    # A worker's own scrape target (`ukcancel.metrics.serve_process_metrics`); unset: none.
    worker_metrics_port: int | None = None
    # ... and the address it listens on: loopback unless set (a pod sets 0.0.0.0 for its scraper).
    worker_metrics_address: str = "127.0.0.1"
    # Client settings: where the `ukcancel cancel/batch/status` commands find the service.
    api_url: str = "http://127.0.0.1:8000"
    token: str | None = None

    # (environment variable, field, parser); the README's settings table mirrors this list.
    ENVIRONMENT: tuple[tuple[str, str, Callable[[str], Any]], ...] = field(
        default=(
            ("REDIS_URL", "redis_url", _redis_url),
            ("CELERY_BROKER_URL", "broker_url", _broker_url),
            ("UKCANCEL_REDIS_SENTINELS", "redis_sentinels", _sentinels),
            ("UKCANCEL_REDIS_SENTINEL_MASTER", "redis_sentinel_master", str),
            ("UKCANCEL_REDIS_SENTINEL_PASSWORD", "redis_sentinel_password", str),
            ("UKCANCEL_REDIS_MIN_REPLICAS", "redis_min_replicas", _non_negative_int),
            ("UKCANCEL_REDIS_REPLICA_TIMEOUT_MS", "redis_replica_timeout_ms", _positive_int),
            ("UKSSDC_BASE_URL", "ukssdc_base_url", _http_url),
            ("UKCANCEL_UKSSDC_API_VERSION", "ukssdc_api_version", str),
            ("UKCANCEL_UKSSDC_CONNECT_TIMEOUT_SECONDS", "ukssdc_connect_timeout_seconds", _positive_float),
            ("UKCANCEL_UKSSDC_TIMEOUT_SECONDS", "ukssdc_timeout_seconds", _positive_float),
            ("UKCANCEL_UKSSDC_DEADLINE_SECONDS", "ukssdc_deadline_seconds", _positive_float),
            ("UKCANCEL_UKSSDC_MAX_REPLY_BYTES", "ukssdc_max_reply_bytes", _positive_int),
            ("UKCANCEL_RETRY_AFTER_MAX_SECONDS", "retry_after_max_seconds", _positive_float),
            ("UKCANCEL_MAX_ATTEMPTS", "max_attempts", _positive_int),
            ("UKCANCEL_RETRY_BASE_SECONDS", "retry_base_seconds", _positive_float),
            ("UKCANCEL_RETRY_MAX_DELAY_SECONDS", "retry_max_delay_seconds", _positive_float),
            ("UKCANCEL_RESULT_TTL_SECONDS", "result_ttl_seconds", _positive_int),
            ("UKCANCEL_MAX_WAIT_SECONDS", "max_wait_seconds", _positive_int),
            ("UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS", "broker_visibility_timeout_seconds", _positive_int),
            ("UKCANCEL_FLEET_RATE_PER_SECOND", "fleet_rate_per_second", _fleet_rate),
            ("UKCANCEL_FLEET_MAX_IN_FLIGHT", "fleet_max_in_flight", _positive_int),
            ("UKCANCEL_FLEET_MAX_WAIT_SECONDS", "fleet_max_wait_seconds", _positive_float),
            ("UKCANCEL_BREAKER_FAILURE_THRESHOLD", "breaker_failure_threshold", _positive_int),
            ("UKCANCEL_BREAKER_COOLDOWN_SECONDS", "breaker_cooldown_seconds", _positive_float),
            ("UKCANCEL_API_RATE_LIMIT", "api_rate_limit", _rate_limit),
            ("UKCANCEL_CALLBACK_ALLOWED_HOSTS", "callback_allowed_hosts", _host_list),
            ("UKCANCEL_CALLBACK_MAX_ATTEMPTS", "callback_max_attempts", _positive_int),
            ("UKCANCEL_WORKER_CONCURRENCY", "worker_concurrency", _positive_int),
            ("UKCANCEL_FLEET_GUARD_SECONDS", "fleet_guard_seconds", _non_negative_float),
            ("UKCANCEL_DISPATCH_LANES", "dispatch_lanes", _positive_int),
            ("UKCANCEL_LEASE_SECONDS", "lease_seconds", _positive_float),
            ("UKCANCEL_RECONCILE_SECONDS", "reconcile_seconds", _positive_float),
            ("UKCANCEL_EXPANSION_TIMEOUT_SECONDS", "expansion_timeout_seconds", _positive_float),
            ("UKCANCEL_JOB_STATUS_TTL_SECONDS", "job_status_ttl_seconds", _positive_float),
            ("UKCANCEL_PLAN_TTL_SECONDS", "plan_ttl_seconds", _positive_float),
            ("UKCANCEL_CONSOLE_SECRET", "console_secret", _secret),
            ("PROMETHEUS_MULTIPROC_DIR", "metrics_multiproc_dir", _directory),
            ("UKCANCEL_WORKER_METRICS_PORT", "worker_metrics_port", _port),
            ("UKCANCEL_WORKER_METRICS_ADDRESS", "worker_metrics_address", _address),
            ("UKCANCEL_CONSOLE_INSECURE_COOKIE", "console_insecure_cookie", _flag),
            ("UKCANCEL_CONSOLE_SESSION_SECONDS", "console_session_seconds", _positive_int),
            ("UKCANCEL_QUOTA_QUEUED_COMMANDS", "quota_queued_commands", _positive_int),
            ("UKCANCEL_QUOTA_BATCHES_PER_HOUR", "quota_batches_per_hour", _positive_int),
            ("UKCANCEL_QUOTA_PLANS_PER_HOUR", "quota_plans_per_hour", _positive_int),
            ("UKCANCEL_QUOTA_LONG_POLLS", "quota_long_polls", _positive_int),
            ("UKCANCEL_METRICS_TOKEN", "metrics_token", _secret),
            ("UKCANCEL_METRICS_CACHE_SECONDS", "metrics_cache_seconds", _non_negative_float),
            ("UKCANCEL_DEADLETTER_MAXLEN", "deadletter_maxlen", _positive_int),
            ("UKCANCEL_PIPELINE_STREAMS", "pipeline_streams", _pipeline_names),
            ("UKCANCEL_LOG_FORMAT", "log_format", _log_format),
            ("UKCANCEL_API_URL", "api_url", _http_url),
            ("UKCANCEL_TOKEN", "token", str),
        ),
        repr=False,
        compare=False,
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default `os.environ`); raise `SettingsError` on a bad value."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, name, parse in cls.ENVIRONMENT:
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            try:
                values[name] = parse(raw)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{variable}={shown_value(variable, raw)} is invalid: {exc}") from None
        settings = cls(**values)
        if bool(settings.redis_sentinels) != bool(settings.redis_sentinel_master):
            raise SettingsError("UKCANCEL_REDIS_SENTINELS and UKCANCEL_REDIS_SENTINEL_MASTER must be set together")
        if settings.redis_sentinels and settings.redis_url is None:
            raise SettingsError(
                "UKCANCEL_REDIS_SENTINELS needs REDIS_URL for the database and credentials (e.g. redis://:pw@master/0)"
            )
        if settings.retry_base_seconds > settings.retry_max_delay_seconds:
            raise SettingsError("UKCANCEL_RETRY_BASE_SECONDS must not exceed UKCANCEL_RETRY_MAX_DELAY_SECONDS")
        if (settings.ukssdc_deadline_seconds or 0) > settings.ukssdc_connect_timeout_seconds + settings.ukssdc_timeout_seconds:
            # The fleet's permit lease covers connect + read timeout; a longer call would outlive it.
            raise SettingsError(
                "UKCANCEL_UKSSDC_DEADLINE_SECONDS must not exceed the UKSSDC connect timeout plus read timeout"
            )
        if settings.reconcile_seconds * 2 > settings.lease_seconds:
            # A lease must outlive a few renewals and reconciler ticks, or live work is taken over.
            raise SettingsError("UKCANCEL_LEASE_SECONDS must be at least twice UKCANCEL_RECONCILE_SECONDS")
        if settings.broker_visibility_timeout_seconds <= settings.retry_max_delay_seconds:
            # A delayed retry that outlives the visibility timeout would be redelivered twice.
            raise SettingsError(
                "UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed UKCANCEL_RETRY_MAX_DELAY_SECONDS"
            )
        return settings

    @property
    def ukssdc_call_deadline_seconds(self) -> float:
        """The wall-clock bound of one UKSSDC call (`UKCANCEL_UKSSDC_DEADLINE_SECONDS`)."""
        return self.ukssdc_deadline_seconds or self.ukssdc_connect_timeout_seconds + self.ukssdc_timeout_seconds

    @property
    def embedded(self) -> bool:
        """No Redis configured: the store is in-process fakeredis and the broker in memory."""
        return self.redis_url is None

    @property
    def sentinel(self) -> bool:
        """Redis is found through Sentinel (`UKCANCEL_REDIS_SENTINELS`)."""
        return bool(self.redis_sentinels)

    @property
    def effective_broker_url(self) -> str:
        """The broker: `CELERY_BROKER_URL`, else the store's Redis (through Sentinel when it is set)."""
        if self.broker_url:
            return self.broker_url
        if self.redis_url and self.sentinel:
            return sentinel_broker_url(self.redis_url, self.redis_sentinels)
        return self.redis_url or "memory://"

    def broker_transport_options(self) -> dict[str, Any]:
        """kombu transport options the broker needs beyond its URL (the Sentinel master's name)."""
        if self.broker_url or not self.sentinel:
            return {}
        options: dict[str, Any] = {"master_name": self.redis_sentinel_master}
        if self.redis_sentinel_password:
            options["sentinel_kwargs"] = {"password": self.redis_sentinel_password}
        return options

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
