"""The console's pages through Flask's test client: off without a secret, the cookie, CSRF, sign-in
and sign-out, revocation, isolation, the admin pages, and bad input shown as the API words it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from ukcancel import keys, submission
from ukcancel.assemble import create_api, create_runtime
from ukcancel.runtime import Runtime
from ukcancel.settings import Settings
from ukcancel.token import Principal

SECRET = "s" * 40
ASTRO, OTHER = "astro@example.org", "other@example.org"


class Console:
    def __init__(self, secret: str | None = SECRET) -> None:
        self.runtime: Runtime = create_runtime(Settings(console_secret=secret))
        # No worker here; refreshes stay out of the in-memory broker that later tests' workers share.
        self.refreshes: list[str] = []
        self.runtime.dispatch.refresh_jobs = self.refreshes.append  # type: ignore[method-assign]
        self.app = create_api(runtime=self.runtime)
        self.tokens = {name: self.runtime.tokens.create(user, name=name, admin=admin)[0]
                       for name, user, admin in (("alice", ASTRO, False), ("bob", OTHER, False),
                                                 ("ops", "ops@example.org", True))}

    def browser(self) -> FlaskClient:
        return self.app.test_client()

    @staticmethod
    def csrf(client: FlaskClient, path: str = "/console/signin") -> str:
        page = client.get(path).get_data(as_text=True)
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    def signed_in(self, name: str) -> FlaskClient:
        client = self.browser()
        response = client.post("/console/signin", data={"token": self.tokens[name], "csrf_token": self.csrf(client)})
        home = "/console/" if name == "ops" else "/console/jobs"  # an admin lands on the administration page
        assert response.status_code == 302 and response.headers["Location"] == home
        return client

    def post(self, client: FlaskClient, path: str, data: dict[str, Any], page: str = "/console/jobs") -> Any:
        return client.post(path, data={**data, "csrf_token": self.csrf(client, page)})


@pytest.fixture
def console() -> Console:
    return Console()


def text(response: Any) -> str:
    return response.get_data(as_text=True)


def test_without_a_secret_the_console_is_off() -> None:
    off = Console(secret=None)
    for path in ("/console/signin", "/console/jobs", "/console/static/console.js"):
        response = off.browser().get(path)
        assert response.status_code == 404
        assert "The console is off" in text(response) and "UKCANCEL_CONSOLE_SECRET" in text(response)
    assert off.browser().get("/healthz").status_code == 200  # the API is not affected


def test_a_signed_in_session_is_an_httponly_strict_cookie_without_the_token(console: Console) -> None:
    client = console.browser()
    response = client.post("/console/signin", data={"token": console.tokens["alice"], "csrf_token": console.csrf(client)})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert console.tokens["alice"] not in cookie
    assert "astro@example.org (alice)" in text(client.get("/console/jobs"))


def test_pages_need_a_session_and_a_bad_token_is_refused(console: Console) -> None:
    client = console.browser()
    assert client.get("/console/commands").headers["Location"].startswith("/console/signin?next=/console/commands")
    refused = client.post("/console/signin", data={"token": "ukc_nope", "csrf_token": console.csrf(client)})
    assert refused.status_code == 401 and "unknown or revoked" in text(refused)
    assert client.get("/console/jobs").status_code == 302


def test_every_form_needs_its_csrf_token(console: Console) -> None:
    client = console.signed_in("alice")
    for path, data in (("/console/signout", {}), ("/console/plans", {"name": "GRB*"}),
                       ("/console/signin", {"token": console.tokens["bob"]})):
        response = client.post(path, data=data)
        assert response.status_code == 400 and "The form was refused" in text(response)
        forged = client.post(path, data={**data, "csrf_token": "forged"})
        assert forged.status_code == 400
    assert "astro@example.org (alice)" in text(client.get("/console/jobs"))  # still alice, still signed in
    assert console.runtime.connection.keys("ukcancel:plan:*") == []


def test_sign_out_and_revocation_end_the_session(console: Console) -> None:
    client = console.signed_in("alice")
    assert console.post(client, "/console/signout", {}).headers["Location"] == "/console/signin"
    assert client.get("/console/jobs").status_code == 302
    other = console.signed_in("bob")
    console.runtime.tokens.revoke("bob")
    assert other.get("/console/jobs").status_code == 302


def test_a_next_page_after_sign_in_stays_on_the_console(console: Console) -> None:
    client = console.browser()
    csrf = console.csrf(client)
    response = client.post("/console/signin?next=https://evil.example/x", data={"token": console.tokens["alice"],
                                                                           "csrf_token": csrf})
    assert response.headers["Location"] == "/console/jobs"


def test_another_users_objects_are_404(console: Console) -> None:
    command = submission.submit(console.runtime, Principal("alice", ASTRO, False, ""), {"job_id": 1001, "products": "all"}).command
    bob = console.signed_in("bob")
    for path in (f"/console/commands/{command.id}", f"/console/commands/{command.id}/live"):
        assert bob.get(path).status_code == 404
    assert console.post(bob, f"/console/commands/{command.id}/withdraw", {}).status_code == 404
    assert console.runtime.registry.get(command.id).state == "queued"
    assert console.signed_in("alice").get(f"/console/commands/{command.id}").status_code == 200
    assert console.signed_in("ops").get(f"/console/commands/{command.id}").status_code == 200


def test_bad_filters_show_the_apis_messages(console: Console) -> None:
    client = console.signed_in("alice")
    api = console.app.test_client().get("/v1/jobs?state=bogus&job_ids=x", headers={
        "Authorization": f"Bearer {console.tokens['alice']}"}).get_json()
    page = client.get("/console/jobs?state=bogus&job_ids=x")
    assert page.status_code == 422
    for error in api["errors"]:
        assert f"{error['pointer'].strip('/')}: {error['detail']}" in text(page)
    bad_plan = console.post(client, "/console/plans", {"products": "Lightcurve"})
    assert bad_plan.status_code == 422 and "products: unknown product" in text(bad_plan)
    listing = client.get("/console/commands?state=done")
    assert listing.status_code == 422 and "state: Must be one of" in text(listing)


def test_admin_pages_are_404_for_users_and_show_the_fleet_to_admins(console: Console) -> None:
    alice = console.signed_in("alice")
    for page in ("fleet", "workers", "queues", "deadletters", "tokens"):
        assert alice.get(f"/console/admin/{page}").status_code == 404
    submission.submit(console.runtime, Principal("alice", ASTRO, False, ""), {"job_id": 1001, "products": "all"})
    console.runtime.connection.xadd(keys.DEADLETTER_STREAM, {"job_id": "12x", "reason": '{"job_id": ["Not a valid integer."]}',
                                                             "entry_id": "1-0"})
    console.runtime.connection.zadd(keys.WORKERS, {"w1@host": 1.0})
    ops = console.signed_in("ops")
    queues = text(ops.get("/console/admin/queues"))
    assert re.search(r"<td>astro@example.org</td><td>1</td><td>\d+ s ago</td>", queues)
    assert "Not a valid integer." in text(ops.get("/console/admin/deadletters"))
    workers = text(ops.get("/console/admin/workers"))
    assert "w1@host" in workers and "1970-01-01 00:00:01 UTC" in workers
    refused = console.post(ops, "/console/admin/fleet", {"rate_per_second": "fast", "max_in_flight": "0"},
                           "/console/admin/fleet")
    assert refused.status_code == 422
    assert "rate_per_second: Not a valid number." in text(refused)
    assert "max_in_flight: Must be greater than or equal to 1 and less than or equal to 1000." in text(refused)
    assert console.runtime.gate.limits().rate_per_second == Settings().fleet_rate_per_second


def test_token_forms_validate_like_the_cli(console: Console) -> None:
    ops = console.signed_in("ops")
    bad = console.post(ops, "/console/admin/tokens", {"user_id": "nobody"}, "/console/admin/tokens")
    assert bad.status_code == 422 and "user_id: Not a valid email address." in text(bad)
    taken = console.post(ops, "/console/admin/tokens", {"user_id": ASTRO, "name": "alice"}, "/console/admin/tokens")
    assert taken.status_code == 422 and "a token named &#39;alice&#39; exists already" in text(taken)
    missing = console.post(ops, "/console/admin/tokens/nobody/revoke", {}, "/console/admin/tokens")
    assert missing.status_code == 404


def test_a_plan_from_the_jobs_page_keeps_the_filters_and_the_ticked_jobs(console: Console) -> None:
    client = console.signed_in("alice")
    ticked = console.post(client, "/console/plans", {"name": "GRB*", "job_ids": ["1001", "1002"]})
    untouched = console.post(client, "/console/plans", {"name": "GRB*", "filter_job_ids": "1003"})
    selections = [console.runtime.plans.get(r.headers["Location"].rsplit("/", 1)[1]).selection for r in (ticked, untouched)]
    assert [(s.name, s.job_ids) for s in selections] == [("GRB*", (1001, 1002)), ("GRB*", (1003,))]


def test_commands_are_paged_and_filtered(console: Console) -> None:
    alice = Principal("alice", ASTRO, False, "")
    ids = [submission.submit(console.runtime, alice, {"job_id": 1001 + n % 2, "products": "all"}).command.id
           for n in range(5)]
    client = console.signed_in("alice")
    first = text(client.get("/console/commands?limit=2"))
    shown = re.findall(r'data-command="([0-9a-f]{32})"', first)
    assert shown == ids[::-1][:2]  # newest first
    next_page = re.search(r'id="next-page" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    assert re.findall(r'data-command="([0-9a-f]{32})"', text(client.get(next_page))) == ids[::-1][2:4]
    by_job = re.findall(r'data-command="([0-9a-f]{32})"', text(client.get("/console/commands?job_id=1002")))
    assert by_job == [ids[3], ids[1]]
    assert "data-command" not in text(console.signed_in("bob").get("/console/commands"))


def test_live_parts_are_served_as_fragments_without_the_layout(console: Console) -> None:
    ops = console.signed_in("ops")
    console.runtime.connection.zadd(keys.WORKERS, {"w9@host": 1.0})
    page = text(ops.get("/console/admin/workers"))
    assert 'data-live="/console/admin/workers?fragment=1"' in page and "<header>" in page
    fragment = ops.get("/console/admin/workers?fragment=1")
    assert "<header>" not in text(fragment) and "w9@host" in text(fragment)
    assert fragment.headers["Cache-Control"] == "no-store"
    listing = text(ops.get("/console/commands?state=queued"))
    assert re.search(r'data-live="/console/commands\?[^"]*state=queued[^"]*fragment=1', listing)
    for path in ("/console/admin/queues", "/console/admin/fleet", "/console/admin/deadletters", "/console/batches"):
        assert "<header>" not in text(ops.get(path + "?fragment=1"))


def test_a_user_naming_another_user_gets_a_403_page(console: Console) -> None:
    alice = console.signed_in("alice")
    for path in (f"/console/jobs?user_id={OTHER}", f"/console/batches?user_id={OTHER}",
                 f"/console/commands?user_id={OTHER}"):
        response = alice.get(path)
        assert response.status_code == 403 and "<header>" in text(response), path
    assert console.refreshes == []  # nothing was asked for bob's jobs


def test_an_admin_lands_on_a_page_that_explains_rather_than_errors(console: Console) -> None:
    ops = console.signed_in("ops")
    home = ops.get("/console/")
    assert home.status_code == 200
    page = text(home)
    assert "signed in as <strong>ops@example.org</strong> with an admin token" in page
    assert "no live stream consumer" in page  # nothing runs in this test: the summary says so
    assert "errors\" role=\"alert\"" not in page.split("admin-summary")[0]
    jobs = ops.get("/console/jobs")
    assert jobs.status_code == 200
    assert "Enter the UKSSDC user" in text(jobs) and "would not list the jobs" not in text(jobs)
    assert console.refreshes == []  # the UKSSDC was not asked for the admin's own (non-existent) jobs
    # A user still lands on their jobs.
    assert console.signed_in("alice").get("/console/").headers["Location"] == "/console/jobs"


def test_a_mistyped_console_address_is_an_html_404_page(console: Console) -> None:
    for client in (console.browser(), console.signed_in("alice")):
        response = client.get("/console/jobz")
        assert response.status_code == 404
        assert response.mimetype == "text/html"
        assert "There is no console page at /console/jobz." in text(response)
    assert console.browser().get("/console/static/console.js").status_code == 200


def test_the_workers_page_shows_processes_and_disagreements(console: Console) -> None:
    from ukcancel import presence

    connection = console.runtime.connection
    presence.publish(connection, "worker:w1@a", presence.WORKER, Settings(callback_allowed_hosts=("hooks.example.org",)))
    presence.publish(connection, "api@a:1", presence.API, Settings())
    page = text(console.signed_in("ops").get("/console/admin/workers"))
    assert "worker:w1@a" in page and "api@a:1" in page
    assert "UKCANCEL_CALLBACK_ALLOWED_HOSTS differs between processes" in page
    assert "no live stream consumer" in page
