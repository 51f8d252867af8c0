"""The UKSSDC simulator over real HTTP: wire shapes, job-table effects, faults and control.

Everything else in the project is tested against this simulator, so it is held to the wire
contract here: if these shapes drift from the real server's, every other test lies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from ukcancel.simulator import (
    API_VERSION,
    DEFAULT_JOBS_PATH,
    Fault,
    SimulatorServer,
    SimulatorState,
    load_jobs,
    load_users,
)

ASTRO = "astro@example.org"
OTHER = "other@example.org"
BULK = "bulk@example.org"


def call(sim: SimulatorServer, endpoint: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{sim.base_url}/{endpoint}", json=body, timeout=kwargs.pop("timeout", 5), **kwargs)


def reply(response: requests.Response) -> dict[str, Any]:
    """The JSON inside an API reply, asserting the real server's framing on the way."""
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert response.text.startswith("\n\n{")
    return json.loads(response.text)


def cancel(sim: SimulatorServer, job_id: Any, what: str, user: str = ASTRO, **kwargs: Any) -> requests.Response:
    return call(sim, "canceljob.php", {"UserID": user, "JobID": job_id, "what": what}, **kwargs)


# ---- canceljob.php ---------------------------------------------------------------------------


def test_cancel_reports_ok_and_cancels_the_product(simulator: SimulatorServer) -> None:
    data = reply(cancel(simulator, 1001, "lc"))
    assert data == {
        "OK": 1,
        "JobID": 1001,
        "APIVersion": API_VERSION,
        "status": {"lc": "Job cancelled OK"},
        "statusCodes": {"lc": 0},
    }
    assert simulator.state.product_state(1001, "lc") == -4
    assert simulator.state.product_state(1001, "psf") == 2


def test_second_cancel_gives_code_1_and_ok_2(simulator: SimulatorServer) -> None:
    reply(cancel(simulator, 1001, "lc"))
    data = reply(cancel(simulator, 1001, "lc,psf"))
    assert data["OK"] == 2
    assert data["statusCodes"] == {"lc": 1, "psf": 0}
    assert data["status"] == {
        "lc": "Job could not be cancelled - has it already finished?",
        "psf": "Job cancelled OK",
    }


def test_completed_product_is_not_cancelled(simulator: SimulatorServer) -> None:
    data = reply(cancel(simulator, 1002, "lc,psf,xastrom"))
    assert data["OK"] == 2
    assert data["statusCodes"] == {"lc": 0, "psf": 1, "xastrom": 0}
    assert simulator.state.product_state(1002, "psf") == 4
    assert simulator.state.product_state(1002, "xastrom") == -4


def test_product_not_in_job_gives_code_2(simulator: SimulatorServer) -> None:
    data = reply(cancel(simulator, 1001, "spec"))
    assert data["OK"] == 2
    assert data["statusCodes"] == {"spec": 2}
    assert data["status"] == {"spec": "No record of that product for this job"}


def test_job_id_as_a_numeric_string_is_accepted(simulator: SimulatorServer) -> None:
    assert reply(cancel(simulator, "1001", "psf"))["OK"] == 1


@pytest.mark.parametrize(("job_id", "user"), [(1004, ASTRO), (9999, ASTRO), ("abc", ASTRO), (1001, "nobody@x")])
def test_cancel_of_someone_elses_or_unknown_job_is_refused(simulator: SimulatorServer, job_id: Any, user: str) -> None:
    data = reply(cancel(simulator, job_id, "lc", user=user))
    assert data == {"OK": 0, "ERROR": f"Job {job_id} is not owned by user {user}", "APIVersion": API_VERSION}
    assert simulator.state.product_state(1004, "lc") == 2


def test_unknown_products_are_listed(simulator: SimulatorServer) -> None:
    data = reply(cancel(simulator, 1001, "lc,LightCurve,foo"))
    assert data["OK"] == 0
    assert data["ERROR"]
    assert data["listErr"] == [{"label": "Unknown products", "list": ["LightCurve", "foo"]}]
    assert simulator.state.product_state(1001, "lc") == 3


@pytest.mark.parametrize("missing", ["UserID", "JobID", "what"])
def test_missing_parameter_is_an_error(simulator: SimulatorServer, missing: str) -> None:
    body = {"UserID": ASTRO, "JobID": 1001, "what": "lc"}
    del body[missing]
    data = reply(call(simulator, "canceljob.php", body))
    assert data["OK"] == 0
    assert missing in data["ERROR"]


def test_body_that_is_not_json_is_an_api_error(simulator: SimulatorServer) -> None:
    response = requests.post(f"{simulator.base_url}/canceljob.php", data=b"UserID=x", timeout=5)
    data = reply(response)
    assert data["OK"] == 0 and data["ERROR"]
    assert simulator.state.log()[-1]["body"] == "UserID=x"


def test_chunked_request_body_is_read(simulator: SimulatorServer) -> None:
    def chunks() -> Any:
        yield b'{"UserID": "astro@example.org",'
        yield b' "JobID": 1001, "what": "lc"}'

    response = requests.post(f"{simulator.base_url}/canceljob.php", data=chunks(), timeout=5)
    assert reply(response)["OK"] == 1


def test_unknown_endpoint_is_an_html_404(simulator: SimulatorServer) -> None:
    response = call(simulator, "cancel_job.php", {"UserID": ASTRO})
    assert response.status_code == 404
    assert response.text.lstrip().startswith("<!DOCTYPE HTML")
    assert requests.get(f"{simulator.base_url}/canceljob.php", timeout=5).status_code == 405


# ---- checkProductStatus.php ------------------------------------------------------------------


def test_status_reports_each_product_of_the_job(simulator: SimulatorServer) -> None:
    reply(cancel(simulator, 1002, "lc"))
    body = {"UserID": ASTRO, "JobID": 1002, "what": "lc,spec,psf,xastrom,image", "whatProg": "lc"}
    data = reply(call(simulator, "checkProductStatus.php", body))
    assert data["OK"] == 1 and data["JobID"] == 1002 and data["APIVersion"] == API_VERSION
    expected = {
        "lc": (-4, "Cancelled by the user"),
        "spec": (2, "Queued"),
        "psf": (4, "Complete"),
        "xastrom": (5, "Waiting for the standard position"),
    }
    for short, (code, text) in expected.items():
        assert data[short]["statusCode"] == code
        assert data[short]["progress"] == {"GotProgress": 0}
        assert data[short]["statusText"] == text
    # A product the job never asked for is left out of the reply.
    assert "image" not in data
    running = reply(call(simulator, "checkProductStatus.php", {"UserID": ASTRO, "JobID": 1001, "what": "lc"}))
    assert running["lc"]["statusText"] == "Running"


def test_status_of_someone_elses_job_is_refused(simulator: SimulatorServer) -> None:
    data = reply(call(simulator, "checkProductStatus.php", {"UserID": OTHER, "JobID": 1001, "what": "lc"}))
    assert data["OK"] == 0
    assert data["ERROR"] == f"Job 1001 is not owned by user {OTHER}"


# ---- listOldJobs.php and getNumJobs.php ------------------------------------------------------


def test_old_jobs_are_newest_first_with_product_flags(simulator: SimulatorServer) -> None:
    data = reply(call(simulator, "listOldJobs.php", {"UserID": ASTRO}))
    assert data["OK"] == 1
    assert [job["JobID"] for job in data["jobs"]] == [1002, 1001, 1003]
    assert data["jobs"][0] == {
        "JobID": 1002,
        "Name": "Swift J1727.8-1613",
        "DateSubmitted": "2026-11-21 08:30:00",
        "LightCurve": True,
        "Spectrum": True,
        "StandardPos": True,
        "EnhancedPos": False,
        "AstromPos": True,
        "Image": False,
        "hasProd": True,
    }
    assert data["jobs"][1]["hasProd"] is False


def test_old_jobs_order_breaks_date_ties_by_job_id(simulator: SimulatorServer) -> None:
    jobs = reply(call(simulator, "listOldJobs.php", {"UserID": BULK}))["jobs"]
    assert [job["JobID"] for job in jobs[:3]] == [2200, 2199, 2198]
    assert len(jobs) == 200


def test_old_jobs_of_a_user_without_jobs_and_of_an_unknown_user(simulator: SimulatorServer) -> None:
    assert reply(call(simulator, "listOldJobs.php", {"UserID": "nojobs@example.org"}))["jobs"] == []
    data = reply(call(simulator, "listOldJobs.php", {"UserID": "NO-ONE"}))
    assert data == {"OK": 0, "ERROR": "The user `NO-ONE` is not recognised / validated", "APIVersion": API_VERSION}


def test_num_jobs_counts_jobs_with_an_active_product(simulator: SimulatorServer) -> None:
    def num_jobs(user: str) -> Any:
        return reply(call(simulator, "getNumJobs.php", {"UserID": user})).get("numJobs")

    assert num_jobs(ASTRO) == 2
    assert num_jobs(BULK) == 200
    assert num_jobs("nojobs@example.org") == 0
    reply(cancel(simulator, 1001, "lc,psf"))
    assert num_jobs(ASTRO) == 1
    assert reply(call(simulator, "getNumJobs.php", {"UserID": "NO-ONE"}))["OK"] == 0


# ---- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status"), [("http503", 503), ("http429", 429), ("http404", 404), ("http500", 500)])
def test_http_error_faults_send_html_and_change_nothing(simulator: SimulatorServer, kind: str, status: int) -> None:
    simulator.state.add_faults(Fault(kind, retry_after=7))
    response = cancel(simulator, 1001, "lc")
    assert response.status_code == status
    assert "<html>" in response.text
    assert response.headers["Retry-After"] == "7"
    assert simulator.state.product_state(1001, "lc") == 3
    assert reply(cancel(simulator, 1001, "lc"))["OK"] == 1  # the fault hit one request only


def test_http503_without_retry_after_has_no_header(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("http503"))
    response = cancel(simulator, 1001, "lc")
    assert response.status_code == 503
    assert "Retry-After" not in response.headers


def test_latency_fault_delays_then_answers(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("latency", seconds=0.3))
    started = time.monotonic()
    assert reply(cancel(simulator, 1001, "lc"))["OK"] == 1
    assert time.monotonic() - started >= 0.3


def test_run_latency_applies_to_every_request(simulator: SimulatorServer) -> None:
    simulator.state.set_latency(100)
    started = time.monotonic()
    reply(cancel(simulator, 1001, "lc"))
    reply(cancel(simulator, 1001, "psf"))
    assert time.monotonic() - started >= 0.2
    simulator.state.set_latency(0)
    assert simulator.state.latency_ms == 0


def test_read_timeout_does_not_process(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("read_timeout", seconds=0.5))
    with pytest.raises(requests.ReadTimeout):
        cancel(simulator, 1001, "lc", timeout=0.2)
    assert simulator.state.product_state(1001, "lc") == 3
    entry = simulator.state.log()[-1]
    assert entry["fault"] == "read_timeout" and entry["status"] is None


def test_read_timeout_after_processing_cancels_without_answering(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("read_timeout_after_processing", seconds=0.5))
    with pytest.raises(requests.ReadTimeout):
        cancel(simulator, 1001, "lc", timeout=0.2)
    assert simulator.state.product_state(1001, "lc") == -4


def test_drop_closes_without_reply_and_without_processing(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("drop"))
    with pytest.raises(requests.ConnectionError):
        cancel(simulator, 1001, "lc")
    assert simulator.state.product_state(1001, "lc") == 3
    entry = simulator.state.log()[-1]
    assert entry["status"] is None and entry["fault"] == "drop" and entry["t_done"] is not None


def test_drop_after_processing_cancels_then_closes(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("drop_after_processing"))
    with pytest.raises(requests.ConnectionError):
        cancel(simulator, 1001, "lc")
    assert simulator.state.product_state(1001, "lc") == -4


def test_truncated_reply_is_cut_json_and_the_cancel_happened(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("truncated"))
    response = cancel(simulator, 1001, "lc")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert response.text.startswith('\n\n{"OK": 1')
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert simulator.state.product_state(1001, "lc") == -4


@pytest.mark.parametrize("kind", ["garbled", "html200"])
def test_unparseable_200_replies_change_nothing(simulator: SimulatorServer, kind: str) -> None:
    simulator.state.add_faults(Fault(kind))
    response = cancel(simulator, 1001, "lc")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert simulator.state.product_state(1001, "lc") == 3


def test_no_ok_reply_is_json_without_ok(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("no_ok"))
    data = reply(cancel(simulator, 1001, "lc"))
    assert "OK" not in data and data["APIVersion"] == API_VERSION
    assert simulator.state.product_state(1001, "lc") == 3


def test_forced_code_4_reports_unknown_outcome_but_cancels(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("codes", codes={"lc": 4}))
    data = reply(cancel(simulator, 1001, "lc,psf"))
    assert data["OK"] == 2
    assert data["statusCodes"] == {"lc": 4, "psf": 0}
    assert data["status"]["lc"].startswith("Outcome unknown")
    status = reply(call(simulator, "checkProductStatus.php", {"UserID": ASTRO, "JobID": 1001, "what": "lc"}))
    assert status["lc"]["statusCode"] == -4


def test_forced_code_3_reports_failure_and_does_not_cancel(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(Fault("codes", codes={"lc": 3}))
    data = reply(cancel(simulator, 1001, "lc"))
    assert data["statusCodes"] == {"lc": 3}
    assert data["status"] == {"lc": "Job could not be cancelled - reason unknown"}
    assert simulator.state.product_state(1001, "lc") == 3


def test_faults_are_fifo_per_endpoint_and_counted(simulator: SimulatorServer) -> None:
    simulator.state.add_faults(
        Fault("http503", count=2),
        Fault("http429"),
        Fault("http500", endpoint="checkProductStatus.php"),
    )
    statuses = [cancel(simulator, 2001, "lc").status_code for _ in range(4)]
    assert statuses == [503, 503, 429, 200]
    status_call = call(simulator, "checkProductStatus.php", {"UserID": BULK, "JobID": 2001, "what": "lc"})
    assert status_call.status_code == 500
    simulator.state.add_faults(Fault("http503"))
    simulator.state.clear_faults()
    assert cancel(simulator, 2001, "psf").status_code == 200


@pytest.mark.parametrize(
    "arguments",
    [
        {"kind": "explode"},
        {"kind": "drop", "count": 0},
        {"kind": "latency", "seconds": -1},
        {"kind": "codes"},
        {"kind": "codes", "codes": {"lc": 9}},
        {"kind": "codes", "codes": {"LightCurve": 0}},
        {"kind": "codes", "codes": {"lc": 4}, "endpoint": "checkProductStatus.php"},
        {"kind": "drop", "codes": {"lc": 4}},
        {"kind": "http503", "retry_after": 1.5},
    ],
)
def test_invalid_faults_are_rejected(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(**arguments)


def test_stop_does_not_wait_for_a_held_request() -> None:
    sim = SimulatorServer(state=SimulatorState()).start()
    sim.state.add_faults(Fault("read_timeout", seconds=30))
    with pytest.raises(requests.ReadTimeout):
        cancel(sim, 1001, "lc", timeout=0.2)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2


# ---- the request log -------------------------------------------------------------------------


def test_log_records_every_api_request(simulator: SimulatorServer) -> None:
    before = time.time()
    simulator.state.add_faults(Fault("http503"))
    cancel(simulator, 1001, "lc")
    cancel(simulator, 1001, "lc")
    requests.get(f"{simulator.base_url}/_sim/log", timeout=5)  # control calls are not logged
    log = simulator.state.log()
    assert [(entry["endpoint"], entry["status"], entry["fault"]) for entry in log] == [
        ("canceljob.php", 503, "http503"),
        ("canceljob.php", 200, None),
    ]
    assert log[1]["body"] == {"UserID": ASTRO, "JobID": 1001, "what": "lc"}
    assert before <= log[0]["t"] <= log[0]["t_done"] <= log[1]["t"] <= log[1]["t_done"]
    assert simulator.state.clear_log() == 2
    assert simulator.state.log() == []


def test_concurrent_clients_are_all_served(simulator: SimulatorServer) -> None:
    failures: list[Any] = []

    def client(first: int) -> None:
        with requests.Session() as session:
            for job_id in range(first, first + 10):
                body = {"UserID": BULK, "JobID": job_id, "what": "lc,psf"}
                response = session.post(f"{simulator.base_url}/canceljob.php", json=body, timeout=5)
                if json.loads(response.text)["OK"] != 1:
                    failures.append(response.text)

    threads = [threading.Thread(target=client, args=(2001 + 10 * index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(simulator.state.log()) == 160
    assert all(simulator.state.product_state(job_id, "psf") == -4 for job_id in range(2001, 2161))
    assert simulator.state.product_state(2161, "lc") == 2


# ---- control endpoints -----------------------------------------------------------------------


def test_control_endpoints_drive_faults_latency_and_log(simulator: SimulatorServer) -> None:
    control = f"{simulator.base_url}/_sim"
    queued = requests.post(f"{control}/faults", json=[{"kind": "http503", "retry_after": 3}], timeout=5)
    assert queued.status_code == 200 and queued.headers["Content-Type"] == "application/json"
    assert queued.json() == {"queued": 1}
    assert requests.get(f"{control}/faults", timeout=5).json()[0]["kind"] == "http503"
    assert cancel(simulator, 1001, "lc").headers["Retry-After"] == "3"

    bad = requests.post(f"{control}/faults", json=[{"kind": "explode"}], timeout=5)
    assert bad.status_code == 400 and "explode" in bad.json()["error"]

    assert requests.post(f"{control}/latency", json={"ms": 20}, timeout=5).json() == {"ms": 20}
    assert simulator.state.latency_ms == 20

    log = requests.get(f"{control}/log", timeout=5).json()
    assert [entry["status"] for entry in log] == [503]
    assert requests.delete(f"{control}/log", timeout=5).json() == {"cleared": 1}
    assert requests.get(f"{control}/log", timeout=5).json() == []
    assert requests.get(f"{control}/nothing", timeout=5).status_code == 404


def test_control_jobs_replace_and_show_the_table(simulator: SimulatorServer) -> None:
    control = f"{simulator.base_url}/_sim/jobs"
    table = [
        {
            "JobID": 7,
            "UserID": "x@example.org",
            "Name": "T",
            "DateSubmitted": "2026-01-01 00:00:00",
            "products": {"lc": 2},
        }
    ]
    assert requests.post(control, json=table, timeout=5).json() == {"jobs": 1, "users": 1}
    assert requests.get(control, timeout=5).json() == table
    assert reply(cancel(simulator, 1001, "lc"))["OK"] == 0
    assert reply(cancel(simulator, 7, "lc", user="x@example.org"))["OK"] == 1

    with_users = {"users": ["solo@example.org"], "jobs": table}
    assert requests.post(control, json=with_users, timeout=5).json() == {"jobs": 1, "users": 2}
    assert reply(call(simulator, "listOldJobs.php", {"UserID": "solo@example.org"}))["jobs"] == []
    bad = requests.post(control, json=[{"JobID": 8, "UserID": "x", "products": {"lc": 9}}], timeout=5)
    assert bad.status_code == 400


# ---- the job table ---------------------------------------------------------------------------


def test_default_table_holds_the_seeded_rows() -> None:
    state = SimulatorState()
    assert state.job(1001) == {
        "JobID": 1001,
        "UserID": ASTRO,
        "Name": "GRB 201221A",
        "DateSubmitted": "2026-11-20 10:15:00",
        "products": {"lc": 3, "psf": 2},
    }
    products = {job_id: state.job(job_id)["products"] for job_id in range(1002, 1006)}  # type: ignore[index]
    assert products == {
        1002: {"lc": 2, "spec": 2, "psf": 4, "xastrom": 5},
        1003: {"lc": 4, "spec": 4},
        1004: {"lc": 2, "spec": 1, "image": 3},
        1005: {"psf": 3, "enh": 2, "sourceDet": 1},
    }
    assert [state.job(job_id)["UserID"] for job_id in (1004, 1005)] == [OTHER, OTHER]  # type: ignore[index]
    bulk = [job for job in state.jobs() if job["UserID"] == BULK]
    assert [job["JobID"] for job in bulk] == list(range(2001, 2201))
    assert all(job["products"] == {"lc": 2, "psf": 2} for job in bulk)
    assert state.registered_users() == [ASTRO, BULK, "nojobs@example.org", OTHER]
    assert DEFAULT_JOBS_PATH.name == "default_jobs.json"


def test_state_copies_are_independent_and_edits_are_validated() -> None:
    state = SimulatorState()
    state.job(1001)["products"]["lc"] = 4  # type: ignore[index]
    assert state.product_state(1001, "lc") == 3
    state.set_product_state(1001, "spec", 4)
    assert state.product_state(1001, "spec") == 4
    with pytest.raises(ValueError):
        state.set_product_state(1001, "lc", 5)  # 5 is for the astrometric position only
    with pytest.raises(KeyError):
        state.product_state(1001, "image")
    assert state.job(424242) is None


def test_loading_a_json_table_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(
        json.dumps(
            {
                "users": ["idle@example.org"],
                "jobs": [
                    {
                        "JobID": 5,
                        "UserID": "a@example.org",
                        "Name": "A",
                        "DateSubmitted": "2026-01-02 00:00:00",
                        "products": {"spec": 3},
                    }
                ],
                "generate": [
                    {"UserID": "b@example.org", "first": 10, "last": 12, "Name": "B{JobID}", "products": {"lc": 1}}
                ],
            }
        )
    )
    jobs = load_jobs(path)
    assert [job["JobID"] for job in jobs] == [5, 10, 11, 12]
    assert jobs[3] == {
        "JobID": 12,
        "UserID": "b@example.org",
        "Name": "B12",
        "DateSubmitted": "",
        "products": {"lc": 1},
    }
    assert load_users(path) == ["idle@example.org"]
    state = SimulatorState.from_file(path)
    assert state.registered_users() == ["a@example.org", "b@example.org", "idle@example.org"]
    assert SimulatorState(jobs=jobs).registered_users() == ["a@example.org", "b@example.org"]

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(jobs[:1]))
    assert load_jobs(plain) == jobs[:1]


@pytest.mark.parametrize(
    "table",
    [
        [{"JobID": 1, "UserID": "a", "products": {"lc": 0}}],
        [{"JobID": 1, "UserID": "a", "products": {"lc": 5}}],
        [{"JobID": 1, "UserID": "a", "products": {"LightCurve": 2}}],
        [{"JobID": 1, "UserID": "a"}, {"JobID": 1, "UserID": "b"}],
        [{"JobID": "1", "UserID": "a"}],
        {"jobs": [], "extra": 1},
    ],
)
def test_malformed_tables_are_rejected(tmp_path: Path, table: Any) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError):
        load_jobs(path)


# ---- running out of process ------------------------------------------------------------------


def test_serve_forever_announces_its_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    # Same import path as this test, from a neutral directory so no source folder shadows it.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    process = subprocess.Popen(
        [sys.executable, "-c", "from ukcancel.simulator import serve_forever; serve_forever('127.0.0.1', 0)"],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("UKSSDC simulator listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[1]
        response = requests.post(f"{base_url}/getNumJobs.php", json={"UserID": ASTRO}, timeout=5)
        assert json.loads(response.text)["numJobs"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
