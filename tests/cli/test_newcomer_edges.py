"""The rough edges a newcomer met, each as it behaves now: one-line errors with exit codes when
Redis or the service is unreachable, an empty --token refused, secrets kept out of configuration
errors, and a callback secret that can be re-issued (shown once) and then signs callbacks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from processes import clean_environment, free_port

from ukcancel import callback
from ukcancel.cli import main
from ukcancel.settings import Settings, SettingsError
from ukcancel.store import connect_redis
from ukcancel.token import TokenRegistry

UKCANCEL = str(Path(sys.executable).with_name("ukcancel"))


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own, as a newcomer's shell runs it."""
    return subprocess.run([UKCANCEL, *args], env={**clean_environment(), **env}, capture_output=True, text=True,
                          timeout=60)


def test_redis_unreachable_is_one_line_and_exit_1_with_the_password_masked() -> None:
    url = f"redis://:hunter2-redis@127.0.0.1:{free_port()}/0"
    for args in (["token", "list"], ["fleet"], ["token", "create", "--user", "a@example.org"],
                 ["token", "rotate-secret", "x"]):
        result = run(*args, REDIS_URL=url)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("Error: cannot reach Redis at 'redis://:***@127.0.0.1:"), result.stderr
        assert "Connection refused" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_the_service_unreachable_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status", "7c9e"], ["list"], ["cancel", "1001"], ["jobs"], ["plan", "apply", "d0db"]):
        result = run(*args, UKCANCEL_API_URL=url, UKCANCEL_TOKEN="ukc_test")
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.strip() == f"Error: cannot reach the service at {url}: Connection refused", result.stderr


def test_an_empty_token_is_a_usage_error_not_a_fallback() -> None:
    result = run("list", "--token", "", UKCANCEL_API_URL="http://127.0.0.1:9", UKCANCEL_TOKEN="ukc_from_env")
    assert result.returncode == 2
    assert "Invalid value for --token: is empty" in result.stderr and "ukc_from_env" not in result.stderr
    assert run("plan", "apply", "d0db", "--token", "  ", UKCANCEL_TOKEN="ukc_from_env").returncode == 2


def test_a_secret_is_never_echoed_in_a_configuration_error() -> None:
    secret = "short-but-secret"
    try:
        Settings.from_env({"UKCANCEL_CONSOLE_SECRET": secret})
    except SettingsError as exc:
        assert secret not in str(exc) and "UKCANCEL_CONSOLE_SECRET" in str(exc)
    else:
        raise AssertionError("a 16-character console secret was accepted")
    result = run("serve", UKCANCEL_CONSOLE_SECRET=secret)
    assert result.returncode == 2 and secret not in result.stderr + result.stdout
    assert "UKCANCEL_CONSOLE_SECRET=(a value of 16 characters, not shown) is invalid" in result.stderr
    broken = run("token", "list", REDIS_URL="http://:hunter2-url@redis.internal/0")
    assert broken.returncode == 2 and "hunter2" not in broken.stderr and ":***@" in broken.stderr


def test_rotate_secret_shows_a_new_secret_once_and_callbacks_are_signed_with_it(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url}
    created = CliRunner().invoke(main, ["token", "create", "--user", "astro@example.org", "--name", "p1", "--json"],
                                 env=env)
    assert created.exit_code == 0, created.output
    first = json.loads(created.stdout)
    rotated = CliRunner().invoke(main, ["token", "rotate-secret", "p1"], env=env)
    assert rotated.exit_code == 0, rotated.output
    new_secret = next(line.split()[-1] for line in rotated.stdout.splitlines() if line.startswith("callback secret:"))
    assert new_secret.startswith("whsec_") and new_secret != first["callback_secret"]
    assert "shown only now" in rotated.stderr
    # The token is unchanged and now carries the new secret: what the worker signs with.
    record = TokenRegistry(connect_redis(Settings(redis_url=redis_url))).verify(first["token"])
    assert record is not None and callback.webhook_secret(record.callback_secret) == new_secret
    body = json.dumps({"id": "c1"}).encode()
    headers = callback.signed_headers("c1", body, record.callback_secret, time.time())
    assert callback.signature_valid(body, headers, new_secret)
    assert not callback.signature_valid(body, headers, first["callback_secret"])
    # Nobody else's listing shows it again; an unknown name is a usage error.
    assert new_secret not in CliRunner().invoke(main, ["token", "list", "--json"], env=env).stdout
    unknown = CliRunner().invoke(main, ["token", "rotate-secret", "nobody"], env=env)
    assert unknown.exit_code == 2 and "no token is named 'nobody'" in unknown.output


def test_token_create_env_prints_lines_a_shell_can_eval(redis_url: str) -> None:
    created = CliRunner().invoke(main, ["token", "create", "--user", "astro@example.org", "--env"],
                                 env={"REDIS_URL": redis_url})
    line = created.stdout.strip()
    assert line.startswith("export UKCANCEL_TOKEN=ukc_") and " UKCANCEL_CALLBACK_SECRET=whsec_" in line
    shell = subprocess.run(["bash", "-c", 'eval "$1"; echo "$UKCANCEL_TOKEN $UKCANCEL_CALLBACK_SECRET"', "_", line],
                           capture_output=True, text=True, check=True)
    token, secret = shell.stdout.split()
    assert TokenRegistry(connect_redis(Settings(redis_url=redis_url))).verify(token) is not None
    assert secret.startswith("whsec_")
