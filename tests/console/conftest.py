"""The console in a real browser: Debian's Chromium driven by Playwright, against the API served on a
local port (embedded store) and the UKSSDC simulator. No browser is downloaded: Playwright drives
/usr/bin/chromium (`.ci/run` installs it)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from ukcancel.assemble import create_api, create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.simulator import SimulatorServer
from ukcancel.worker.embedded import EmbeddedWorker
from ukcancel.worker.tasks import celery_of

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECRET = "console-test-secret-" + "0123456789abcdef" * 2
DOCS = Path(__file__).resolve().parents[2] / "docs"
USERS = {"alice": ("astro@example.org", False), "bob": ("other@example.org", False), "ops": ("ops@example.org", True)}


@dataclass
class Site:
    url: str
    runtime: Runtime
    simulator: SimulatorServer
    tokens: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def site(simulator: SimulatorServer) -> Iterator[Site]:
    """The API and console on a free port, embedded store, no worker (see `worker`)."""
    runtime = create_runtime(Settings(ukssdc_base_url=simulator.base_url, retry_base_seconds=0.05,
                                      retry_max_delay_seconds=0.5, fleet_rate_per_second=50, console_secret=SECRET))
    served = Site("", runtime, simulator)
    for name, (user_id, admin) in USERS.items():
        served.tokens[name] = runtime.tokens.create(user_id, name=name, admin=admin)[0]
    server = make_server("127.0.0.1", 0, create_api(runtime=runtime), threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield served
    finally:
        server.shutdown()
        thread.join(5)
        # Tasks sent while no worker ran (refreshes) would wait in the in-memory broker, which every
        # embedded runtime of this process shares, for a later test's worker: drop them.
        celery_of(runtime).control.purge()


@pytest.fixture
def worker(site: Site) -> Iterator[EmbeddedWorker]:
    with EmbeddedWorker(site.runtime) as running:
        yield running


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser_session(playwright_driver, site: Site) -> Iterator[Callable[[str], object]]:
    """`browser_session("alice")`: a page of a fresh browser profile, signed in as that token."""
    contexts = []
    profiles = []

    def open_session(name: str | None) -> object:
        profile = tempfile.mkdtemp(prefix="ukcancel-chromium-")
        profiles.append(profile)
        context = playwright_driver.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 800},
        )
        contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(20_000)
        if name is not None:
            page.goto(site.url + "/console/jobs")
            page.fill("input[name=token]", site.tokens[name])
            page.click("button[type=submit]")
            page.wait_for_url("**/console/jobs")
        return page

    yield open_session
    for context in contexts:
        context.close()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)

