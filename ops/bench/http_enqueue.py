"""Benchmark 6: HTTP enqueue against a hand-rolled Flask + Celery endpoint, loaded with wrk (a C client).

Both apps run under the same gunicorn settings, the service's shipped ones (gevent, 2 workers, no
access log)
against the same Redis; wrk runs 2 threads x 16 connections. Rows: `GET /healthz` (the HTTP stack
alone) and `POST /v1/cancellations` with a new JobID per request (ops/bench/post.lua). The anchor
(ops/bench/anchor_app.py) does a marshmallow load, one HSET and one `send_task`; this service
adds bearer-token authentication, the per-token rate limit, the fair schedule and problem bodies.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from typing import Any

from harness import HERE, USER_API, Context, child_env, fmt, verdict
from processes import free_port

GUNICORN = ["--workers", "2", "--worker-class", "gevent", "--worker-connections", "2000", "--timeout", "90"]
WRK = ["-t2", "-c16"]


class Served:
    """One app under gunicorn, in its own process group."""

    def __init__(self, ctx: Context, name: str, app: str, env: dict[str, str], server: list[str] | None = None) -> None:
        import requests

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        gunicorn = shutil.which("gunicorn", path=str(HERE.parents[1] / ".venv" / "bin")) or "gunicorn"
        argv = [gunicorn, "--bind", f"127.0.0.1:{self.port}", *(server or GUNICORN), "--chdir", str(HERE), app]
        self.ctx = ctx
        self.child = ctx.children.start(name, argv, env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200 and \
                        self.child.log().count("Booting worker") >= 2:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not start:\n{self.child.log()}")

    def stop(self) -> None:
        self.ctx.children.stop(self.child)


def wrk(url: str, seconds: int, token: str = "", script: bool = False) -> dict[str, float]:
    argv = ["wrk", *WRK, f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", str(HERE / "post.lua")]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30,
                          env={**child_env(), "WRK_TOKEN": token})
    text = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed:\n{text}\n{done.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"per_second": float(rate.group(1)), "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0}


def bench_http(ctx: Context) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    seconds = 4 if ctx.quick else 8
    store = ctx.store
    env = child_env(REDIS_URL=store.url, UKCANCEL_API_RATE_LIMIT="100000000 per minute")
    out: dict[str, Any] = {"seconds": seconds, "server": "gunicorn " + " ".join(GUNICORN), "wrk": " ".join(WRK)}
    rounds = 2 if ctx.quick else 3
    samples: dict[str, list[dict[str, float]]] = {}
    # Alternating rounds, medians compared: the machine's other load moves both sides alike.
    for _ in range(rounds):
        for name, app in (("service", "ukcancel.wsgi:app"), ("anchor", "anchor_app:app")):
            served = Served(ctx, f"http-{name}", app, env)
            try:
                samples.setdefault(f"{name} healthz", []).append(wrk(served.url + "/healthz", seconds))
                store.reset()
                token = store.token(USER_API, "bench-http")  # after the reset, which deletes tokens too
                samples.setdefault(f"{name} post", []).append(wrk(served.url, seconds, token, script=True))
            finally:
                served.stop()
            store.reset()
    rows = {key: {"per_second": statistics.median(r["per_second"] for r in runs),
                  "non_2xx": sum(r["non_2xx"] for r in runs), "all": [r["per_second"] for r in runs]}
            for key, runs in samples.items()}
    out["rounds"] = rounds
    out["rows"] = rows
    ratio = rows["service post"]["per_second"] / rows["anchor post"]["per_second"]
    out["post_ratio"] = ratio
    # A figure of refused requests is no figure: every POST must have been accepted (202).
    clean = rows["service post"]["non_2xx"] == 0 and rows["anchor post"]["non_2xx"] == 0
    ctx.out.table(
        "Benchmark 6: HTTP with wrk (" + " ".join(WRK) + f", {seconds} s), both under gunicorn " + " ".join(GUNICORN),
        ["request", "this service /s", "hand-rolled Flask+Celery /s", "service / hand-rolled", "non-2xx"],
        [["GET /healthz", fmt(rows["service healthz"]["per_second"], 0), fmt(rows["anchor healthz"]["per_second"], 0),
          fmt(rows["service healthz"]["per_second"] / rows["anchor healthz"]["per_second"], 2), ""],
         ["POST /v1/cancellations", fmt(rows["service post"]["per_second"], 0),
          fmt(rows["anchor post"]["per_second"], 0), fmt(ratio, 2),
          f"{rows['service post']['non_2xx']:.0f} / {rows['anchor post']['non_2xx']:.0f}"]],
        caption=f"Medians of {rounds} alternating rounds. The anchor: marshmallow load + one HSET + one send_task "
                "(ops/bench/anchor_app.py). The service: token, rate limit, record + place in line in one "
                "transaction, and a turn only when no lane is running or on its way.",
    )
    healthz_ratio = rows["service healthz"]["per_second"] / rows["anchor healthz"]["per_second"]
    out["healthz_ratio"] = healthz_ratio
    ctx.summary.append(["6", "HTTP enqueue / hand-rolled endpoint (wrk)", fmt(ratio, 2) if clean else "non-2xx answers",
                        ">= 1.0", verdict(clean and ratio >= 1.0)])
    # Beside it, the HTTP stack alone: what every request pays before any route runs (not judged).
    ctx.summary.append(["6", "GET /healthz / hand-rolled endpoint's (wrk)", fmt(healthz_ratio, 2), "(beside it)", ""])
    return out
