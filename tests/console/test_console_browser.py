"""The console in Debian's Chromium (Playwright): sign in, filter jobs, preview and confirm a plan,
watch the batch complete, withdraw a queued command, isolation between users, an admin changing
the fleet's limits. The screenshots under docs/ are taken by these tests: with
UKCANCEL_UPDATE_SCREENSHOTS=1 they are written there, otherwise to a temporary folder, so that a
test run leaves the checkout as it found it."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from conftest import DOCS, Site  # tests/console/conftest.py

from ukcancel import submission
from ukcancel.fleet import FleetGate
from ukcancel.token import Principal

Page = Any


SHOTS = DOCS if os.environ.get("UKCANCEL_UPDATE_SCREENSHOTS") == "1" else Path(tempfile.mkdtemp(prefix="ukcancel-shots-"))


def screenshot(page: Page, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def job_rows(page: Page) -> list[str]:
    return page.locator("#jobs tbody tr[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)")


def test_sign_in_filter_preview_confirm_and_watch_the_batch(site: Site, worker, browser_session) -> None:
    page = browser_session("alice")
    assert page.locator("header .who").inner_text().startswith("astro@example.org (alice")
    page.wait_for_selector("#jobs tr[data-job='1001']")  # the live table, once the worker has read the jobs
    assert sorted(job_rows(page)) == ["1001", "1002", "1003"]
    assert "LightCurve: 3 Running" in page.locator("#jobs tr[data-job='1001']").inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "ukcancel_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    screenshot(page, "jobs")

    page.fill("input[name=name]", "grb*")
    page.click("#job-filters button[type=submit]")
    page.wait_for_url(re.compile(r".*name=grb.*"))
    assert job_rows(page) == ["1001"]

    page.fill("input[name=name]", "")
    page.fill("input[name=submitted_after]", "yesterday")
    page.click("#job-filters button[type=submit]")
    assert "submitted_after: Not a valid datetime." in page.locator(".errors").inner_text()  # the API's message

    page.goto(site.url + "/console/jobs")
    page.wait_for_selector("#jobs tr[data-job='1002']")
    page.check("input[name=job_ids][value='1001']")
    page.check("input[name=job_ids][value='1002']")
    page.click("#preview-plan")
    page.wait_for_url("**/console/plans/*")
    page.wait_for_selector("#plan-state:text('ready')")
    pairs = page.locator("#pairs tbody").inner_text()
    assert "1001" in pairs and "LightCurve, StandardPos" in pairs
    assert "1002" in pairs and "LightCurve, Spectrum, AstromPos" in pairs
    assert "not one of the job ids asked for" in page.locator("#left-out").inner_text()  # 1003
    assert site.simulator.state.product_state(1001, "lc") == 3  # a preview cancels nothing
    screenshot(page, "plan")

    page.click("#confirm-plan")
    page.wait_for_url("**/console/batches/*")
    page.wait_for_selector("#batch-state:text('completed')", timeout=30_000)
    assert page.locator("#batch-progress").get_attribute("value") == "1.0"
    assert "(1, {'LightCurve': {'code': 0, 'text': 'Job cancelled OK'}" in page.locator("#batch-items").inner_text()
    assert all(site.simulator.state.product_state(1001, s) == -4 for s in ("lc", "psf"))
    assert site.simulator.state.product_state(1002, "psf") == 4  # finished: never in the plan
    screenshot(page, "batch")


def queued_command(site: Site, user: str = "astro@example.org") -> str:
    caller = Principal("alice", user, False, "")
    return submission.submit(site.runtime, caller, {"job_id": 1001, "products": ["LightCurve"]}).command.id


def test_withdraw_a_queued_command(site: Site, browser_session) -> None:
    command_id = queued_command(site)  # no worker: it stays queued
    page = browser_session("alice")
    page.goto(site.url + "/console/commands?state=queued")
    row = page.locator(f"#commands tr[data-command='{command_id}']")
    assert row.locator(".state").inner_text() == "queued"
    screenshot(page, "commands")
    row.locator("button", has_text="Withdraw").click()
    assert f"Command {command_id} withdrawn" in page.locator(".flash").inner_text()
    assert site.runtime.registry.get(command_id).state == "aborted"
    assert site.simulator.state.log() == []

    page.goto(site.url + f"/console/commands/{command_id}")
    assert page.locator("#command-state").inner_text() == "aborted"
    assert "Withdrawn before it reached the UKSSDC" in page.locator("#command-result").inner_text()
    assert [li.split()[0] for li in page.locator("#timeline li").all_inner_texts()] == ["queued", "aborted"]


def test_a_command_page_shows_the_result_as_the_guide_prints_it(site: Site, worker, browser_session) -> None:
    command_id = queued_command(site)
    site.runtime.registry.wait_terminal(command_id, 30)
    page = browser_session("alice")
    page.goto(site.url + f"/console/commands/{command_id}")
    result = page.locator("#command-result").inner_text()
    assert ">>> print(cancelStatus)\n(1, {'LightCurve': {'code': 0, 'text': 'Job cancelled OK'}})" in result
    assert [li.split()[0] for li in page.locator("#timeline li").all_inner_texts()] == ["queued", "running", "completed"]
    screenshot(page, "command")


def test_another_users_session_cannot_open_the_command(site: Site, browser_session) -> None:
    command_id = queued_command(site)
    page = browser_session("bob")
    response = page.goto(site.url + f"/console/commands/{command_id}")
    assert response.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    assert command_id not in page.content().replace(f"No cancel command {command_id}.", "")
    assert page.goto(site.url + "/console/admin/fleet").status == 404  # not an admin: no such page
    signed_out = browser_session(None)
    signed_out.goto(site.url + f"/console/commands/{command_id}")
    assert "/console/signin" in signed_out.url


def test_an_admin_changes_the_fleet_rate_and_the_gate_sees_it(site: Site, browser_session) -> None:
    page = browser_session("ops")
    page.goto(site.url + "/console/admin/fleet")
    page.fill("input[name=rate_per_second]", "0.0005")  # below the lowest accepted rate
    page.click("#change-fleet")
    assert ("rate_per_second: Must be greater than or equal to 0.001 and less than or equal to 1000."
            in page.locator(".errors").inner_text())
    page.fill("input[name=rate_per_second]", "7.5")
    page.fill("input[name=max_in_flight]", "3")
    page.click("#change-fleet")
    assert "7.5 calls/s" in page.locator("#fleet-rate").inner_text()
    limits = FleetGate(site.runtime.connection, site.runtime.settings).limits()
    assert (limits.rate_per_second, limits.max_in_flight) == (7.5, 3)
    screenshot(page, "fleet")

    page.goto(site.url + "/console/admin/tokens")
    page.fill("input[name=user_id]", "new@example.org")
    page.fill("input[name=name]", "newcomer")
    page.click("#create-token")
    token = page.locator("#new-token pre").inner_text().strip()
    assert site.runtime.tokens.verify(token).user_id == "new@example.org"
    page.reload()
    assert token not in page.content()  # shown once
    page.locator("tr[data-token='newcomer'] button").click()
    assert site.runtime.tokens.verify(token) is None
