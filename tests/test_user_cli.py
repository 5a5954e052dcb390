"""`flask users ...` (gateway/accounts/cli.py): list, create, delete, promote and demote.

The commands run through Flask's CLI runner against SQLite and a real PostgreSQL database
(found as in test_user_stores.py: tests/services.py), and once as the real shell command
`flask --app wsgi users ...` on a SQLite file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from services import postgres_database

from gateway.accounts import cli

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-test-secret-" + "0123456789abcdef" * 2
PASSWORD = "correct horse battery"
HASH_MARKERS = ("scrypt:", "pbkdf2:", "$2b$", "$argon2")
LINE = re.compile(r"([^\t]+)\t(user|admin)\t([^\t]+)\t(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A postgresql:// URL of a database created for this module, dropped after it."""
    with postgres_database("gateway_cli_test") as url:
        yield url


def with_cli(app: Flask) -> Flask:
    """The app, with the users commands whether or not create_app registers them yet."""
    if "users" not in app.cli.commands:
        cli.init_app(app)
    return app


@pytest.fixture(params=["sqlite", "postgres"])
def cli_app(request, make_app) -> Flask:
    """An app on an empty database: SQLite :memory:, or this module's PostgreSQL one."""
    if request.param == "sqlite":
        return with_cli(make_app())
    url = request.getfixturevalue("postgres_url")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")
    return with_cli(make_app(DATABASE_URL=url))


@pytest.fixture
def users(cli_app) -> Callable[..., object]:
    """Run `flask users ARGS...` on cli_app: users("create", "bob", "-p", "...")."""
    runner = cli_app.test_cli_runner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(args=["users", *args], input=input)

    return run


def login(app: Flask, username: str, password: str = PASSWORD):
    """POST /users/login over the API; return the response."""
    return app.test_client().post("/users/login", json={"username": username, "password": password})


def listed(result) -> dict[str, tuple[str, str, str]]:
    """{username: (role, email, created_at)} from the output of `users list`."""
    rows = {}
    for line in result.stdout.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a user line: {line!r}"
        username, role, email, created_at = match.groups()
        rows[username] = (role, email, created_at)
    return rows


def assert_no_secret(result, password: str = PASSWORD) -> None:
    assert password not in result.output
    for marker in HASH_MARKERS:
        assert marker not in result.output


def test_the_commands_are_registered(cli_app):
    group = cli_app.cli.commands["users"]
    assert {"list", "create", "delete", "promote", "demote"} <= set(group.commands)


def test_create_then_list(users, cli_app):
    created = users("create", "alice", "-p", PASSWORD, "--email", "alice@example.com")
    assert created.exit_code == 0, created.output
    assert "created user 'alice'" in created.output
    assert_no_secret(created)
    result = users("list")
    assert result.exit_code == 0, result.output
    [(role, email, created_at)] = [listed(result)["alice"]]
    assert (role, email) == ("user", "alice@example.com")
    # created_at as the API shows it.
    response = login(cli_app, "alice")
    assert response.status_code == 200, response.get_json()
    user = response.get_json()["user"]
    assert (user["role"], user["created_at"]) == ("user", created_at)
    assert_no_secret(result)


def test_list_is_sorted_and_says_when_empty(users):
    empty = users("list")
    assert empty.exit_code == 0
    assert empty.stdout == ""
    assert "no users" in empty.stderr
    for name in ("carol", "Bob", "alice"):
        assert users("create", name, "-p", PASSWORD).exit_code == 0
    assert users("create", "admin1", "-p", PASSWORD, "--admin").exit_code == 0
    rows = listed(users("list"))
    assert list(rows) == ["Bob", "admin1", "alice", "carol"]
    assert rows["admin1"][:2] == ("admin", "-")
    assert rows["carol"][:2] == ("user", "-")


def test_create_prompts_for_the_password_twice_without_echoing_it(users, cli_app):
    result = users("create", "prompted", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "created user 'prompted'" in result.output
    assert_no_secret(result)
    assert login(cli_app, "prompted").status_code == 200


def test_create_with_mismatched_prompts_creates_nothing(users):
    result = users("create", "mismatch", input=f"{PASSWORD}\nsomething else\n")
    assert result.exit_code != 0
    assert "mismatch" not in listed(users("list"))


def test_create_admin_logs_in_as_admin(users, cli_app):
    result = users("create", "boss", "-p", PASSWORD, "--admin")
    assert result.exit_code == 0, result.output
    assert "created admin 'boss'" in result.output
    assert login(cli_app, "boss").get_json()["user"]["role"] == "admin"


def test_a_taken_username_fails_and_keeps_the_first_account(users, cli_app):
    assert users("create", "dup", "-p", PASSWORD).exit_code == 0
    again = users("create", "dup", "-p", "another password", "--admin")
    assert again.exit_code == 1
    assert "already taken" in again.output
    assert login(cli_app, "dup").get_json()["user"]["role"] == "user"
    assert login(cli_app, "dup", "another password").status_code == 401


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name", "-p", PASSWORD], "username must be"),
        (["x" * 65, "-p", PASSWORD], "username must be"),
        (["shorty", "-p", "seven77"], "password must be"),
        (["longy", "-p", "p" * 73], "password must be"),
        (["mailer", "-p", PASSWORD, "--email", "no-at-sign"], "email must"),
    ],
)
def test_invalid_fields_are_refused_with_the_rule(users, args, message):
    result = users("create", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert_no_secret(result, args[2])
    assert listed(users("list")) == {}


def test_promote_and_demote(users, cli_app):
    assert users("create", "climber", "-p", PASSWORD).exit_code == 0
    before = login(cli_app, "climber").get_json()["user"]

    promoted = users("promote", "climber")
    assert promoted.exit_code == 0, promoted.output
    assert "'climber' is now 'admin'" in promoted.output
    after = login(cli_app, "climber").get_json()["user"]
    assert after["role"] == "admin"
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] >= before["updated_at"]
    assert listed(users("list"))["climber"][0] == "admin"

    twice = users("promote", "climber")
    assert twice.exit_code == 0
    assert "already 'admin'" in twice.output

    demoted = users("demote", "climber")
    assert demoted.exit_code == 0, demoted.output
    assert login(cli_app, "climber").get_json()["user"]["role"] == "user"
    assert "already 'user'" in users("demote", "climber").output


@pytest.mark.parametrize("command", ["promote", "demote", "delete"])
def test_an_unknown_user_fails_with_a_message(users, command):
    assert users("create", "Known", "-p", PASSWORD).exit_code == 0
    for name in ("nobody", "known"):  # usernames are case-sensitive
        result = users(command, name, input="y\n")
        assert result.exit_code == 1, result.output
        assert f"no user named {name!r}" in result.output
    assert list(listed(users("list"))) == ["Known"]


def test_delete_asks_first_unless_told_yes(users, cli_app):
    for name in ("keep", "gone", "quick"):
        assert users("create", name, "-p", PASSWORD).exit_code == 0

    declined = users("delete", "keep", input="n\n")
    assert declined.exit_code == 1
    assert "Delete user 'keep'?" in declined.output
    confirmed = users("delete", "gone", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "deleted 'gone'" in confirmed.output
    quick = users("delete", "quick", "--yes")
    assert quick.exit_code == 0, quick.output
    assert "?" not in quick.output

    assert list(listed(users("list"))) == ["keep"]
    assert login(cli_app, "gone").status_code == 401
    assert users("delete", "gone", "--yes").exit_code == 1


def test_a_deleted_users_token_no_longer_finds_its_profile(users, cli_app):
    assert users("create", "short-lived", "-p", PASSWORD).exit_code == 0
    token = login(cli_app, "short-lived").get_json()["token"]
    assert users("delete", "short-lived", "-y").exit_code == 0
    profile = cli_app.test_client().get(
        "/users/profile", headers={"Authorization": f"Bearer {token}"}
    )
    assert profile.status_code == 404


# --- the real shell command -------------------------------------------------------------------


def _flask_command() -> list[str]:
    beside = Path(sys.executable).with_name("flask")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("flask")
    return [found] if found else [sys.executable, "-m", "flask"]


def test_the_flask_command_on_a_sqlite_file(tmp_path, make_app):
    if "users" not in make_app().cli.commands:
        pytest.skip("create_app does not call gateway.accounts.cli.init_app yet")
    database = tmp_path / "gateway.db"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("FLASK_") and key not in ("BROKER_URL", "DATABASE_URL")
    }
    env |= {"JWT_SECRET_KEY": SECRET, "DATABASE_URL": str(database), "LOG_LEVEL": "WARNING"}

    def flask_users(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*_flask_command(), "--app", "wsgi", "users", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = flask_users("create", "shell", "-p", PASSWORD, "--email", "s@example.com")
    assert created.returncode == 0, created.stderr
    assert "created user 'shell'" in created.stdout
    assert PASSWORD not in created.stdout + created.stderr

    duplicate = flask_users("create", "shell", "-p", PASSWORD)
    assert duplicate.returncode != 0
    assert "already taken" in duplicate.stderr

    listing = flask_users("list")
    assert listing.returncode == 0, listing.stderr
    [line] = listing.stdout.splitlines()
    assert LINE.fullmatch(line).groups()[:3] == ("shell", "user", "s@example.com")

    promoted = flask_users("promote", "shell")
    assert promoted.returncode == 0, promoted.stderr
    # The gateway, on the same file, logs the account in as an admin.
    api = make_app(DATABASE_URL=str(database))
    assert login(api, "shell").get_json()["user"]["role"] == "admin"
    assert "\tadmin\t" in flask_users("list").stdout

    demoted = flask_users("demote", "shell")
    assert demoted.returncode == 0, demoted.stderr
    assert login(api, "shell").get_json()["user"]["role"] == "user"

    unknown = flask_users("promote", "nobody")
    assert unknown.returncode != 0
    assert "no user named 'nobody'" in unknown.stderr

    deleted = flask_users("delete", "shell", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert flask_users("list").stdout == ""
    assert login(api, "shell").status_code == 401
    assert flask_users("delete", "shell", "--yes").returncode != 0
