"""The console against a hostile peer (Flask's test client): sign-out ends the session on the
server, the cookie is Secure, pages are neither framed nor cached, a CR/LF `back` is refused, a
console session has its own rate-limit bucket, and an admin lifts a fleet pause."""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
from test_console_pages import SECRET, Console, text  # tests/console/test_console_pages.py

from ukcancel import submission
from ukcancel.assemble import create_api, create_runtime
from ukcancel.settings import Settings
from ukcancel.token import Principal

ASTRO = "astro@example.org"


@pytest.fixture
def console() -> Console:
    return Console()


def session_cookie(client) -> str:  # type: ignore[no-untyped-def]
    cookie = client.get_cookie("ukcancel_console", path="/console")
    assert cookie is not None
    return cookie.value


def test_a_cookie_copied_before_sign_out_is_signed_out_too(console: Console) -> None:
    alice = console.signed_in("alice")
    copied = session_cookie(alice)
    assert console.post(alice, "/console/signout", {}).status_code == 302
    thief = console.browser()
    thief.set_cookie("ukcancel_console", copied, path="/console")
    response = thief.get("/console/jobs")
    assert response.status_code == 302 and response.headers["Location"].startswith("/console/signin")
    # a session of its own, signed in again, works; signing out one session leaves others alone
    again, other = console.signed_in("alice"), console.signed_in("alice")
    console.post(again, "/console/signout", {})
    assert other.get("/console/jobs").status_code == 200


def test_the_session_cookie_is_secure_unless_plain_http_development_is_set(console: Console) -> None:
    client = console.browser()
    response = client.post("/console/signin", data={"token": console.tokens["alice"], "csrf_token": console.csrf(client)})
    morsel = SimpleCookie(response.headers["Set-Cookie"])["ukcancel_console"]
    assert morsel["secure"] is True and morsel["httponly"] is True
    runtime = create_runtime(Settings(console_secret=SECRET, console_insecure_cookie=True))
    token = runtime.tokens.create(ASTRO, name="dev")[0]
    dev = create_api(runtime=runtime).test_client()
    answer = dev.post("/console/signin", data={"token": token, "csrf_token": Console.csrf(dev)})
    assert answer.status_code == 302 and "Secure" not in answer.headers["Set-Cookie"]


def test_pages_are_never_framed_nor_cached(console: Console) -> None:
    ops = console.signed_in("ops")
    created = console.post(ops, "/console/admin/tokens", {"user_id": ASTRO, "name": "fresh"}, "/console/admin/tokens")
    assert created.status_code == 200 and "fresh" in text(created)
    for response in (created, ops.get("/console/jobs"), console.browser().get("/console/signin")):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
        assert response.headers["X-Frame-Options"] == "DENY"


def test_a_back_with_cr_lf_or_another_site_is_not_followed(console: Console) -> None:
    alice = console.signed_in("alice")
    queued = submission.submit(console.runtime, Principal("alice", ASTRO, False, ""), {"job_id": 1001, "products": "all"})
    command_id = queued.command.id
    page = f"/console/commands/{command_id}"
    for back in ("/console/jobs\r\nSet-Cookie: x=1", "/console/\nLocation: //evil.example", "//evil.example/",
                 "/console//evil.example", "https://evil.example/console/"):
        response = console.post(alice, f"/console/commands/{command_id}/withdraw", {"back": back}, page)
        assert response.status_code == 302, back
        assert response.headers["Location"] == page
        assert "x=1" not in response.headers.get("Set-Cookie", "")
    kept = console.post(alice, f"/console/commands/{command_id}/withdraw", {"back": "/console/commands?state=queued"}, page)
    assert kept.headers["Location"] == "/console/commands?state=queued"


def test_bad_api_tokens_from_one_address_do_not_lock_console_users_out() -> None:
    console = Console()
    console.runtime = create_runtime(Settings(console_secret=SECRET, api_rate_limit="5 per minute"))
    console.app = create_api(runtime=console.runtime)
    console.tokens = {"alice": console.runtime.tokens.create(ASTRO, name="alice")[0]}
    alice = console.signed_in("alice")
    flood = console.browser()
    statuses = [flood.get("/v1/cancellations", headers={"Authorization": "Bearer ukc_bogus"}).status_code
                for _ in range(8)]
    assert statuses[-1] == 429  # the anonymous API bucket of this address is spent
    assert alice.get("/console/jobs").status_code == 200  # the session counts against its own token
    newcomer = console.browser()
    assert newcomer.get("/console/signin").status_code == 200  # the console's anonymous bucket is apart


def test_an_admin_lifts_a_fleet_pause_with_the_console_button(console: Console) -> None:
    gate = console.runtime.gate
    gate.pause(600)
    ops = console.signed_in("ops")
    page = ops.get("/console/admin/fleet")
    assert 'id="resume-fleet"' in text(page) and "s left (a Retry-After)" in text(page)
    refused = ops.post("/console/admin/fleet/resume", data={})  # no CSRF token
    assert refused.status_code == 400 and gate.paused_for() > 0
    alice = console.signed_in("alice")
    assert console.post(alice, "/console/admin/fleet/resume", {}).status_code == 404
    assert gate.paused_for() > 0
    lifted = console.post(ops, "/console/admin/fleet/resume", {}, "/console/admin/fleet")
    assert lifted.status_code == 302 and gate.paused_for() == 0
    assert 'id="resume-fleet"' not in text(ops.get("/console/admin/fleet"))
