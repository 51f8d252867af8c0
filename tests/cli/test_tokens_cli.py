"""`ukcancel token create / list / revoke` against a real Redis."""

from __future__ import annotations

import json

import redis
from click.testing import CliRunner, Result

from ukcancel.cli import main
from ukcancel.token import TokenRegistry


def token_cli(redis_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["token", *args], env={"REDIS_URL": redis_url, "COLUMNS": "200"},
                              catch_exceptions=False)


def created_token(redis_url: str, *args: str) -> str:
    result = token_cli(redis_url, "create", *args)
    assert result.exit_code == 0, result.output
    return next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("token:"))


def test_a_pasted_whole_token_is_revoked_by_its_digest(redis_url: str) -> None:
    leaked = created_token(redis_url, "--user", "astro@example.org", "--name", "astro-pipeline")
    registry = TokenRegistry(redis.Redis.from_url(redis_url))
    assert registry.verify(leaked) is not None

    revoked = token_cli(redis_url, "revoke", leaked)
    assert revoked.exit_code == 0, revoked.output
    assert "revoked astro-pipeline (astro@example.org)" in revoked.output
    assert registry.verify(leaked) is None and registry.list() == []

    again = token_cli(redis_url, "revoke", leaked)
    assert again.exit_code == 2
    assert "not a valid token" in again.output
    assert leaked not in again.output  # a leaked token is not printed back


def test_revoke_by_name_and_by_prefix_still_work(redis_url: str) -> None:
    created_token(redis_url, "--user", "astro@example.org", "--name", "one")
    second = created_token(redis_url, "--user", "astro@example.org", "--name", "two")
    assert token_cli(redis_url, "revoke", "one").exit_code == 0
    by_prefix = token_cli(redis_url, "revoke", second[:10])
    assert by_prefix.exit_code == 0 and "revoked two" in by_prefix.output
    assert token_cli(redis_url, "revoke", "one").exit_code == 2


def test_token_list_has_a_header_row_and_json_without_secrets(redis_url: str) -> None:
    user = created_token(redis_url, "--user", "astro@example.org", "--name", "astro-pipeline")
    created_token(redis_url, "--user", "ops@example.org", "--name", "ops", "--admin")

    table = token_cli(redis_url, "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "name" in line and "user_id" in line and "role" in line)
    body = "\n".join(lines[header + 1:])
    assert "astro-pipeline" in body and f"{user[:10]}..." in body and "ops" in body and "admin" in body

    listed = token_cli(redis_url, "list", "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["user_id"], r["role"]) for r in rows] == [
        ("astro-pipeline", "astro@example.org", "user"), ("ops", "ops@example.org", "admin")
    ]
    assert rows[0]["prefix"] == user[:10] and rows[0]["created_at"].endswith("Z")
    assert all(set(r) == {"name", "user_id", "role", "prefix", "created_at"} for r in rows)
    assert user not in listed.output
