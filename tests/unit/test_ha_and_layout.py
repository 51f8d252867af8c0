"""Settings of Redis high availability, the replica confirmation, the fleet pause after a master change
and the key layout's version and migration, on fakeredis (the real failover: tests/ha)."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from ukcancel import __version__, keys
from ukcancel.failover import MasterWatch, pause_window_seconds
from ukcancel.fleet import FleetGate
from ukcancel.layout import CURRENT_LAYOUT, LayoutMigrationTimeout, LayoutTooNew, ensure_layout, stored_layout
from ukcancel.settings import Settings, SettingsError
from ukcancel.store import ReplicasUnconfirmed, confirm_replicas, connect_redis, delete_if_held, master_watchers

SENTINEL_ENV = {
    "REDIS_URL": "redis://:s%40cret@ignored:6379/4",
    "UKCANCEL_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380",
    "UKCANCEL_REDIS_SENTINEL_MASTER": "ukcancel",
}


def test_sentinel_settings_make_a_sentinel_broker_url_with_the_database_and_credentials() -> None:
    settings = Settings.from_env({**SENTINEL_ENV, "UKCANCEL_REDIS_SENTINEL_PASSWORD": "sentinel-pw-42"})
    assert settings.redis_sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert settings.effective_broker_url == (
        "sentinel://:s%40cret@10.0.0.1:26379/4;sentinel://:s%40cret@10.0.0.2:26380/4"
    )
    assert settings.broker_transport_options() == {
        "master_name": "ukcancel", "sentinel_kwargs": {"password": "sentinel-pw-42"},
    }
    assert "sentinel-pw-42" not in repr(settings)


def test_an_explicit_broker_is_kept_with_sentinel() -> None:
    settings = Settings.from_env({**SENTINEL_ENV, "CELERY_BROKER_URL": "amqp://guest:guest@rabbit//"})
    assert settings.effective_broker_url == "amqp://guest:guest@rabbit//"
    assert settings.broker_transport_options() == {}


@pytest.mark.parametrize("env", [
    {"REDIS_URL": "redis://x/0", "UKCANCEL_REDIS_SENTINELS": "a:26379"},
    {"REDIS_URL": "redis://x/0", "UKCANCEL_REDIS_SENTINEL_MASTER": "m"},
    {"UKCANCEL_REDIS_SENTINELS": "a:26379", "UKCANCEL_REDIS_SENTINEL_MASTER": "m"},
    {"REDIS_URL": "redis://x/0", "UKCANCEL_REDIS_SENTINELS": "a", "UKCANCEL_REDIS_SENTINEL_MASTER": "m"},
    {"UKCANCEL_REDIS_MIN_REPLICAS": "-1"},
])
def test_incomplete_or_invalid_sentinel_settings_stop_start_up(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_a_sentinel_client_follows_the_master_and_can_be_watched() -> None:
    client = connect_redis(Settings.from_env(SENTINEL_ENV))
    assert "SentinelConnectionPool" in repr(client.connection_pool)
    assert client.connection_pool.connection_kwargs["db"] == 4
    assert client.connection_pool.connection_kwargs["password"] == "s@cret"
    assert master_watchers(client) == []
    assert master_watchers(fakeredis.FakeRedis()) is None
    tls = connect_redis(Settings.from_env({**SENTINEL_ENV, "REDIS_URL": "rediss://:pw@ignored/0"}))
    assert issubclass(tls.connection_pool.connection_class, redis.SSLConnection)


def test_confirm_replicas_is_a_no_op_without_a_minimum() -> None:
    confirm_replicas(fakeredis.FakeRedis(), 0, 100)  # fakeredis has no WAIT: nothing is sent


def test_confirm_replicas_raises_when_too_few_replicas_answer(redis_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ReplicasUnconfirmed, match="0 of 1 replica"):
        confirm_replicas(redis_client, 1, 50)  # the shared test Redis has no replica


def test_a_new_master_pauses_the_fleet_for_one_window_once() -> None:
    connection = fakeredis.FakeRedis()
    now = [1000.0]
    gate = FleetGate(connection, Settings(fleet_rate_per_second=0.5), clock=lambda: now[0])
    watch = MasterWatch(connection, gate, guard_seconds=0.04)
    assert watch.on_master("first")  # nothing recorded yet: pause, to be safe
    connection.delete(keys.FLEET_PAUSED_UNTIL)
    assert not watch.on_master("first")
    assert gate.paused_for() == 0
    assert watch.on_master("second")
    assert gate.paused_for() == pytest.approx(2.04)  # 1 / 0.5 per second, plus the guard
    assert connection.get(keys.MASTER_RUN_ID) == b"second"


def test_the_pause_window_is_a_second_or_the_spacing_of_slow_calls() -> None:
    assert pause_window_seconds(20, 0.04) == pytest.approx(1.04)
    assert pause_window_seconds(0.25, 0.0) == pytest.approx(4.0)


# -- the key layout ------------------------------------------------------------------------------------
def test_an_empty_database_is_stamped_with_this_layout() -> None:
    connection = fakeredis.FakeRedis()
    assert stored_layout(connection) is None
    ensure_layout(connection)
    assert stored_layout(connection) == CURRENT_LAYOUT
    assert connection.hget(keys.LAYOUT, "release") == __version__.encode()
    assert not connection.exists(keys.LAYOUT_LOCK)


def test_an_unmarked_layout_of_0_2_0_is_stamped_and_left_as_it_is() -> None:
    connection = fakeredis.FakeRedis()
    connection.rpush(keys.fair_queue("u"), "c1")
    connection.zadd(keys.LEASES, {"c2": 5.0})
    assert stored_layout(connection) == 2
    assert ensure_layout(connection) == 2
    assert stored_layout(connection) == CURRENT_LAYOUT
    assert connection.lrange(keys.fair_queue("u"), 0, -1) == [b"c1"]
    assert connection.zscore(keys.LEASES, "c2") == 5.0


def test_claims_of_0_1_0_become_expired_leases() -> None:
    connection = fakeredis.FakeRedis()
    connection.hset(keys.command("live"), "state", "running")
    connection.hset(keys.command("done"), "state", "completed")
    connection.hset(keys.LEGACY_FAIR_CLAIMS, mapping={"task-1": "live", "task-2": "done", "task-3": "gone"})
    assert ensure_layout(connection) == 1
    assert connection.zrange(keys.LEASES, 0, -1, withscores=True) == [(b"live", 0.0)]
    assert connection.hget(keys.LEASE_HOLDERS, "live") == b"migrated-claim:task-1"
    assert not connection.exists(keys.LEGACY_FAIR_CLAIMS)
    assert stored_layout(connection) == CURRENT_LAYOUT


def test_a_newer_layout_is_refused_naming_both_versions() -> None:
    connection = fakeredis.FakeRedis()
    connection.hset(keys.LAYOUT, mapping={"version": CURRENT_LAYOUT + 1, "release": "9.0.0"})
    with pytest.raises(LayoutTooNew, match=rf"layout {CURRENT_LAYOUT + 1}.*{__version__} \(layout {CURRENT_LAYOUT}\)"):
        ensure_layout(connection)


def test_a_migration_held_elsewhere_is_waited_for_then_given_up() -> None:
    connection = fakeredis.FakeRedis()
    connection.rpush(keys.fair_queue("u"), "c1")
    connection.set(keys.LAYOUT_LOCK, "other", ex=60)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1.0:  # the other process finishes after a second
            connection.hset(keys.LAYOUT, "version", CURRENT_LAYOUT)

    assert ensure_layout(connection, clock=lambda: now[0], sleep=sleep) == CURRENT_LAYOUT
    connection.delete(keys.LAYOUT)
    with pytest.raises(LayoutMigrationTimeout, match="other"):
        ensure_layout(connection, wait_seconds=5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))


# -- the version and the acceptance answer without a replica ------------------------------------------
def test_the_cli_reports_the_package_version() -> None:
    from click.testing import CliRunner

    from ukcancel.cli import main

    result = CliRunner().invoke(main, ["--version"], prog_name="ukcancel")
    assert result.exit_code == 0 and result.output.strip() == f"ukcancel, version {__version__}"


def test_without_a_confirming_replica_acceptance_is_a_503_that_says_a_retry_is_safe(redis_url: str) -> None:
    from ukcancel.assemble import create_api
    from ukcancel.stream import CommandStreamConsumer

    settings = Settings(redis_url=redis_url, redis_min_replicas=1, redis_replica_timeout_ms=50)
    app = create_api(settings)
    runtime = app.extensions["ukcancel"]
    token = runtime.tokens.create("astro@example.org")[0]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}

    first = client.post("/v1/cancellations", json={"job_id": 1001, "products": ["lc"]}, headers=headers)
    assert first.status_code == 503 and first.content_type == "application/problem+json"
    detail = first.get_json()["detail"]
    assert "not confirmed by a replica" in detail and "same Idempotency-Key is safe" in detail
    again = client.post("/v1/cancellations", json={"job_id": 1001, "products": ["lc"]}, headers=headers)
    assert again.status_code == 503  # still no replica: the replay is not reported either
    assert len(runtime.connection.keys("ukcancel:cmd:*")) == 1  # the retry made no second command

    batch = client.post("/v1/batches", json={"items": [{"job_id": 1001, "products": ["lc"]}]},
                        headers={"Authorization": f"Bearer {token}"})
    assert batch.status_code == 503 and "GET /v1/batches/" in batch.get_json()["detail"]

    consumer = CommandStreamConsumer(runtime, "t", block_ms=10)
    consumer.ensure_group()
    runtime.connection.xadd(keys.COMMAND_STREAM, {"token": token, "job_id": "1002", "products": "lc"})
    [outcome] = consumer.step()
    assert outcome.pending  # no accepted entry until a replica confirms
    assert runtime.connection.xlen(keys.ACCEPTED_STREAM) == 0


def test_a_lease_or_lock_is_deleted_only_by_its_holder() -> None:
    """`store.delete_if_held`, the one compare-and-delete of the reservation, the listing lease,
    the reconciler's lock and the layout lock: a holder whose lease expired and was taken by
    another since deletes nothing."""
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    connection.set("lease", "second holder")
    assert delete_if_held(connection, "lease", "first holder") is False
    assert connection.get("lease") == b"second holder"
    assert delete_if_held(connection, "lease", "second holder") is True
    assert connection.get("lease") is None
    assert delete_if_held(connection, "lease", "second holder") is False  # gone: nothing to give back
