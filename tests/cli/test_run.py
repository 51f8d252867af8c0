"""`ukcancel run`: every part on one host from one environment, started and stopped together, as
real processes against real Redis; the API starts without warnings and logs each request once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from processes import clean_environment, free_port, kill_group, start_in_own_group, wait_for

from ukcancel.client import Client
from ukcancel.settings import Settings
from ukcancel.store import connect_redis
from ukcancel.token import TokenRegistry

UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))


def readyz(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return {}


def test_run_starts_every_part_together_and_stops_them_together(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**clean_environment(), "REDIS_URL": redis_url, "UKCANCEL_API_URL": url,
           "UKCANCEL_RETRY_BASE_SECONDS": "0.05", "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "0.5"}
    log = tmp_path / "run.log"
    run = start_in_own_group([UKCANCEL, "run", "--simulator", "--api-workers", "1", "--pool", "threads"], env, log)
    try:
        wait_for(lambda: "ready:" in log.read_text(), 60, "ukcancel run to say it is ready")
        body = readyz(url)
        assert body["status"] == "ok" and body["checks"]["stream_consumers"] == 1
        assert body["checks"]["settings"] == "agree" and "problems" not in body
        token, _ = TokenRegistry(connect_redis(Settings(redis_url=redis_url))).create("astro@example.org")
        client = Client(url, token)
        assert client.cancel_products(1001, ["LightCurve"]) == (1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}})
        run.send_signal(signal.SIGTERM)
        assert run.wait(90) == 0
    finally:
        if run.poll() is None:
            kill_group(run)
    output = log.read_text()
    assert "stopped" in output.splitlines()[-1]
    assert "MonkeyPatchWarning" not in output
    # One line per request, the app's own: no gunicorn access log next to it.
    assert output.count("POST /v1/cancellations") == 1, output
    assert '"POST /v1/cancellations HTTP/1.1"' not in output
    # Every part is gone: nothing answers on the API's port and no process is left in Redis.
    assert readyz(url) == {}
    connection = connect_redis(Settings(redis_url=redis_url))
    wait_for(lambda: not connection.zrangebyscore("ukcancel:workers", time.time() - 15, "+inf"), 10, "workers to leave")


def test_run_says_when_a_part_dies_and_stops_the_rest(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**clean_environment(), "REDIS_URL": redis_url, "UKCANCEL_API_URL": f"http://127.0.0.1:{port}"}
    log = tmp_path / "run.log"
    run = start_in_own_group([UKCANCEL, "run", "--api-workers", "1", "--pool", "threads"], env, log)
    try:
        wait_for(lambda: "ready:" in log.read_text(), 60, "ukcancel run to say it is ready")
        consumer_pid = int(next(line for line in log.read_text().splitlines()
                                if line.startswith("started stream consumer")).split("pid ")[1].rstrip(")"))
        subprocess.run(["kill", "-KILL", str(consumer_pid)], check=True)
        assert run.wait(90) == 1
    finally:
        if run.poll() is None:
            kill_group(run)
    assert "Error: the stream consumer exited (status -9); stopping the other parts." in log.read_text()


def test_run_without_redis_is_a_usage_error_pointing_at_the_embedded_mode() -> None:
    result = subprocess.run([UKCANCEL, "run"], env=clean_environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs REDIS_URL" in result.stderr and "ukcancel serve --simulator" in result.stderr
