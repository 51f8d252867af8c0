""""all" resolved from the user's cached job listing: one listOldJobs.php per user per status TTL.

Real Redis, the real fleet gate and the UKSSDC simulator; what the UKSSDC was asked is read from
the simulator's request log. Turns run as a worker's would (`CancellationRun`), in threads when
the point is that many commands ask at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ukcancel import keys
from ukcancel.assemble import create_runtime
from ukcancel.command import CancelCommand
from ukcancel.jobs import ListedJob
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.worker.cancellation import CancellationRun
from ukcancel.worker.listing_resolver import ListingResolver, resolution
from ukcancel.worker.ukssdc import UkssdcClient

ASTRO = "astro@example.org"  # jobs 1001 (lc 3, psf 2), 1002 (lc 2, spec 2, psf 4, xastrom 5), 1003 (lc 4, spec 4)
OTHER = "other@example.org"  # jobs 1004, 1005 (psf, xpsf, sourceDet)
CANCELLED_OK = "Job cancelled OK"


class Clock:
    """The job cache's clock, moved by the test (the TTL is not slept out)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(simulator: SimulatorServer, redis_url: str) -> Iterator[Runtime]:
    settings = Settings(redis_url=redis_url, ukssdc_base_url=simulator.base_url, fleet_rate_per_second=1000,
                        fleet_max_in_flight=64, fleet_max_wait_seconds=5, fleet_guard_seconds=0,
                        ukssdc_connect_timeout_seconds=2, ukssdc_timeout_seconds=5)
    runtime = create_runtime(settings)
    runtime.schedule.dispatch = lambda count: None  # turns are run by the test
    yield runtime
    runtime.connection.close()


def client_for(runtime: Runtime) -> UkssdcClient:
    s = runtime.settings
    return UkssdcClient(s.ukssdc_base_url, s.ukssdc_api_version, s.ukssdc_connect_timeout_seconds,
                        s.ukssdc_timeout_seconds)


def calls(simulator: SimulatorServer, endpoint: str) -> list[dict[str, Any]]:
    return [entry for entry in simulator.state.log() if entry["endpoint"] == endpoint]


def submit(runtime: Runtime, job_id: int, user: str = ASTRO) -> CancelCommand:
    command = CancelCommand(job_id=job_id, user_id=user, products="all")
    runtime.schedule.enqueue([command])
    return command


def run_turns(runtime: Runtime, count: int, threads: int = 1) -> None:
    """`count` turns, `threads` at a time, each with its own UKSSDC client (as pool processes have)."""
    errors: list[BaseException] = []

    def turns(first: int, step: int) -> None:
        client = client_for(runtime)
        try:
            for i in range(first, count, step):
                CancellationRun(runtime, f"turn-{i}", runtime.gate, client).run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=turns, args=(i, threads)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors


def result(runtime: Runtime, command: CancelCommand) -> Any:
    stored = runtime.registry.get(command.id)
    assert stored is not None
    return stored.result


def many_jobs(simulator: SimulatorServer, count: int, first: int = 5000) -> list[int]:
    """`count` more jobs of ASTRO, each with a running light curve and a queued standard position."""
    extra = [{"JobID": first + i, "UserID": ASTRO, "products": {"lc": 3, "psf": 2}} for i in range(count)]
    simulator.state.load_jobs([*simulator.state.jobs(), *extra])
    return [first + i for i in range(count)]


# -- the worker's path ---------------------------------------------------------------------------
def test_many_all_commands_at_once_cost_one_listing_and_one_cancel_each(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    simulator.state.set_latency(30)  # the listing takes a while: the other turns ask meanwhile
    jobs = many_jobs(simulator, 24)
    commands = [submit(runtime, job_id) for job_id in jobs]
    run_turns(runtime, len(commands), threads=8)
    assert len(calls(simulator, "listOldJobs.php")) == 1
    assert len(calls(simulator, "canceljob.php")) == len(commands)
    for command in commands:
        assert result(runtime, command) == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK},
                                                "StandardPos": {"code": 0, "text": CANCELLED_OK}}]
        stored = runtime.registry.get(command.id)
        assert stored is not None and stored.resolved == ["lc", "psf", "sourceDet"] and stored.unlisted


def test_the_result_is_the_one_a_listing_of_its_own_gave(runtime: Runtime, simulator: SimulatorServer) -> None:
    # The tuples of the straight "all" tests, now with the listing shared between the commands.
    mixed = submit(runtime, 1002)
    source_det = submit(runtime, 1005, user=OTHER)
    other_mixed = submit(runtime, 1001)
    run_turns(runtime, 3)
    assert result(runtime, mixed) == [2, {
        "LightCurve": {"code": 0, "text": CANCELLED_OK},
        "Spectrum": {"code": 0, "text": CANCELLED_OK},
        "StandardPos": {"code": 1, "text": "Job could not be cancelled - has it already finished?"},
        "AstromPos": {"code": 0, "text": CANCELLED_OK},
    }]
    assert result(runtime, other_mixed) == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK},
                                                "StandardPos": {"code": 0, "text": CANCELLED_OK}}]
    assert result(runtime, source_det) == [1, {
        "StandardPos": {"code": 0, "text": CANCELLED_OK},
        "EnhancedPos": {"code": 0, "text": CANCELLED_OK},
        "SourceDet": {"code": 0, "text": CANCELLED_OK},
    }]
    assert [c["body"]["UserID"] for c in calls(simulator, "listOldJobs.php")] == [ASTRO, OTHER]


def test_a_listing_older_than_the_ttl_is_asked_for_again(runtime: Runtime, simulator: SimulatorServer) -> None:
    clock = Clock(runtime.registry.clock())
    runtime.jobs.clock = clock
    first = submit(runtime, 1001)
    run_turns(runtime, 1)
    clock.now += runtime.settings.job_status_ttl_seconds - 0.5  # still fresh
    second = submit(runtime, 1002)
    run_turns(runtime, 1)
    assert len(calls(simulator, "listOldJobs.php")) == 1
    clock.now += 1.0  # now older than the TTL
    third = submit(runtime, 1003)
    run_turns(runtime, 1)
    assert len(calls(simulator, "listOldJobs.php")) == 2
    assert all(result(runtime, c) is not None for c in (first, second, third))


def test_a_job_newer_than_the_listing_is_asked_for_once_then_unlisted(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    run_turns_for = submit(runtime, 1001)
    run_turns(runtime, 1)  # the listing is cached now
    # A job the cached listing cannot show (submitted after it): one fresh listing is asked for.
    simulator.state.load_jobs([*simulator.state.jobs(), {"JobID": 1020, "UserID": ASTRO, "products": {"lc": 2}}])
    newer = submit(runtime, 1020)
    run_turns(runtime, 1)
    assert len(calls(simulator, "listOldJobs.php")) == 2
    assert result(runtime, newer) == [1, {"LightCurve": {"code": 0, "text": CANCELLED_OK}}]
    # A job no listing shows: asked for once (the cached listing is older than the command), then
    # every product is asked for and the code-2 entries dropped, as before.
    hidden = submit(runtime, 9999)
    again = submit(runtime, 9999)
    run_turns(runtime, 2)
    assert len(calls(simulator, "listOldJobs.php")) == 3  # the second command trusts the newer listing
    for command in (hidden, again):
        stored = runtime.registry.get(command.id)
        assert stored is not None and stored.unlisted
        assert stored.resolved == ["lc", "spec", "psf", "enh", "xastrom", "image", "sourceDet"]
    assert result(runtime, run_turns_for) is not None


def test_a_refusal_is_kept_for_the_ttl_and_every_command_gets_it(runtime: Runtime, simulator: SimulatorServer) -> None:
    user = "nobody@example.org"
    commands = [submit(runtime, 1001, user=user) for _ in range(3)]
    run_turns(runtime, 3)
    expected = [0, {"ERROR": f"The user `{user}` is not recognised / validated"}]
    assert [result(runtime, c) for c in commands] == [expected] * 3
    assert len(calls(simulator, "listOldJobs.php")) == 1
    assert calls(simulator, "canceljob.php") == []
    # GET /v1/jobs shows the refusal as after a refused refresh.
    listing = runtime.jobs.listing(user)
    assert listing is not None
    assert listing.error == f"the UKSSDC would not list the jobs of {user}: {expected[1]['ERROR']}"


def test_a_listing_cached_without_flags_is_not_trusted(runtime: Runtime, simulator: SimulatorServer) -> None:
    # Saved before each row's flags were recorded: a missing SourceDet flag cannot be told apart.
    runtime.jobs.save_listing(ASTRO, [ListedJob(1001, "", None, None, ("LightCurve", "StandardPos"))])
    stored = json.loads(runtime.connection.hget(keys.jobs(ASTRO), "jobs"))
    assert "flags" not in stored[0]
    command = submit(runtime, 1001)
    run_turns(runtime, 1)
    assert len(calls(simulator, "listOldJobs.php")) == 1
    assert runtime.registry.get(command.id).resolved == ["lc", "psf", "sourceDet"]  # type: ignore[union-attr]


# -- the resolver alone --------------------------------------------------------------------------
def test_concurrent_resolvers_share_one_listing(runtime: Runtime, simulator: SimulatorServer) -> None:
    simulator.state.set_latency(100)
    found: list[Any] = []
    made: list[int] = []
    lock = threading.Lock()

    def resolve(job_id: int) -> None:
        def call(fn: Any, *args: Any) -> Any:
            with lock:
                made.append(job_id)
            return fn(*args)

        resolver = ListingResolver(runtime.jobs, client_for(runtime), call, runtime.settings)
        job = resolver.job(ASTRO, job_id, since=runtime.registry.clock())
        with lock:
            found.append(job)

    threads = [threading.Thread(target=resolve, args=(job_id,)) for job_id in (1001, 1002, 1003) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == 1 and len(calls(simulator, "listOldJobs.php")) == 1
    assert sorted(job.job_id for job in found) == sorted([1001, 1002, 1003] * 4)
    assert runtime.connection.exists(keys.jobs_listing(ASTRO)) == 0  # the lease was given back


def test_resolution_matches_the_listing_rules() -> None:
    listed = ListedJob(7, "", None, None, ("LightCurve", "StandardPos"), ("LightCurve", "StandardPos", "SourceDet"))
    assert resolution(listed) == (["lc", "psf"], False)  # a row with a SourceDet flag (false): trusted
    no_flag = ListedJob(7, "", None, None, ("LightCurve",), ("LightCurve",))
    assert resolution(no_flag) == (["lc", "sourceDet"], True)
    nothing = ListedJob(7, "", None, None, (), ("LightCurve",))
    assert resolution(nothing) == (["lc", "spec", "psf", "enh", "xastrom", "image", "sourceDet"], True)
    assert resolution(None) == resolution(nothing)


# -- all_active reuses what was read within the TTL ----------------------------------------------
def expand(runtime: Runtime) -> tuple[str, int | None]:
    from ukcancel import submission
    from ukcancel.batch import EXPANDING, Batch
    from ukcancel.worker.all_active import ActiveJobsExpansion

    runtime.dispatch.expand_all_active = lambda batch_id: None  # type: ignore[method-assign]  # run by hand
    batch = submission.start_expansion(runtime, Batch(ASTRO, "astro", state=EXPANDING))
    return batch.id, ActiveJobsExpansion(runtime, batch.id, runtime.gate, client_for(runtime)).run()


def test_all_active_reuses_states_read_within_the_ttl(runtime: Runtime, simulator: SimulatorServer) -> None:
    from ukcancel.worker.jobs_refresh import JobsRefresh

    clock = Clock(runtime.registry.clock())
    runtime.jobs.clock = clock
    JobsRefresh(runtime, ASTRO, runtime.gate, client_for(runtime)).run()  # what GET /v1/jobs has a worker do
    assert [e["endpoint"] for e in simulator.state.log()] == ["listOldJobs.php"] + ["checkProductStatus.php"] * 3
    simulator.state.clear_log()

    clock.now += 1
    batch_id, enqueued = expand(runtime)
    # A listing is taken for the batch (a job may be newer than the cached one); no state is read again.
    assert [e["endpoint"] for e in simulator.state.log()] == ["listOldJobs.php"]
    assert enqueued == 2
    items = {item.job_id: item.products for item in runtime.batches.items(batch_id, 0, 10)}
    assert items == {1001: ["LightCurve", "StandardPos"], 1002: ["LightCurve", "Spectrum", "AstromPos"]}
    simulator.state.clear_log()

    # Older than the TTL: states that can still change are read again (job 1003's are final: not).
    clock.now += runtime.settings.job_status_ttl_seconds
    expand(runtime)
    asked = [e["body"].get("JobID") for e in simulator.state.log() if e["endpoint"] == "checkProductStatus.php"]
    assert sorted(asked) == [1001, 1002]


def test_all_active_keeps_what_it_read_for_the_jobs_view(runtime: Runtime, simulator: SimulatorServer) -> None:
    expand(runtime)
    listing, views = runtime.jobs.views(ASTRO)
    assert listing is not None and listing.error is None
    states = {view.job.job_id: view.states.states for view in views if view.states is not None}
    assert states[1001] == {"LightCurve": (3, "Running"), "StandardPos": (2, "Queued")}
    assert set(states) == {1001, 1002, 1003}


def test_a_listing_is_parsed_again_only_when_it_changed(runtime: Runtime) -> None:
    cache = runtime.jobs
    clock = Clock(1_800_000_000.0)
    cache.clock = clock
    cache.save_listing(ASTRO, [ListedJob(1001, "a", None, None, ("LightCurve",), ("LightCurve",))])
    first = cache.current_listing(ASTRO)
    assert first is not None and cache.current_listing(ASTRO) is first  # unchanged: the same parsed copy
    clock.now += 1
    cache.save_listing(ASTRO, [ListedJob(1002, "b", None, None, ("Spectrum",), ("Spectrum",))])
    second = cache.current_listing(ASTRO)
    assert second is not first and second is not None and [job.job_id for job in second.jobs] == [1002]
    cache.save_refusal(ASTRO, "no")  # a refusal at the same clock reading changes the head too
    refused = cache.current_listing(ASTRO)
    assert refused is not None and refused.refused == "no"
