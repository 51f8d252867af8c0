"""The console in Debian's Chromium against a hostile page: it cannot be framed by another local
site, and a session cookie copied before sign-out is signed out too."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Site  # tests/console/conftest.py

from ukcancel import submission
from ukcancel.token import Principal

Page = Any


@pytest.fixture
def framing_site(site: Site) -> Iterator[str]:
    """Another origin on this host (same site: 127.0.0.1) whose page frames the console."""
    page = (f'<!doctype html><title>framer</title><iframe id="victim" width="900" height="600" '
            f'src="{site.url}/console/commands"></iframe>').encode()

    class Framer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Framer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(5)


def test_another_local_site_cannot_frame_the_console(site: Site, browser_session, framing_site: str) -> None:
    command = submission.submit(site.runtime, Principal("alice", "astro@example.org", False, ""),
                                {"job_id": 1001, "products": "all"}).command
    page = browser_session("alice")  # signed in: a frame would show alice's queued command and its button
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text))
    page.goto(framing_site)
    page.wait_for_timeout(500)
    frame = next(f for f in page.frames if f != page.main_frame)
    assert frame.locator("body").count() == 0 or frame.locator(f"text={command.id[:8]}").count() == 0
    assert frame.locator("form button").count() == 0  # nothing to click in the frame
    assert any("frame-ancestors" in text or "X-Frame-Options" in text or "refused" in text.lower() for text in blocked)
    assert site.runtime.registry.state_of(command.id) == "queued"


def test_a_cookie_copied_before_sign_out_does_not_sign_in_another_browser(site: Site, browser_session) -> None:
    page = browser_session("alice")
    copied = [c for c in page.context.cookies() if c["name"] == "ukcancel_console"]
    assert copied and copied[0]["secure"] is True and copied[0]["httpOnly"] is True
    page.click("header form button[type=submit]")  # Sign out
    page.wait_for_url("**/console/signin")

    thief = browser_session(None)
    thief.context.add_cookies(copied)
    thief.goto(site.url + "/console/jobs")
    assert "/console/signin" in thief.url
    assert thief.locator("input[name=token]").count() == 1
