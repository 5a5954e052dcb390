"""The UserStore contract, run against every store: SQLite and a real PostgreSQL server.

PostgreSQL comes from TEST_POSTGRES_URL (a postgresql:// URL of a user who may create
databases), else from the local server as user postgres or root. Each session works in a
database of its own, dropped at the end. Without a server the PostgreSQL tests skip, saying
why, except under CI (CI=true), where they fail: CI never passes without them.
"""

from __future__ import annotations

import selectors
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import postgres_database
from werkzeug.security import generate_password_hash

from gateway.accounts.offload import CpuPool
from gateway.accounts.sqlite import SqliteUserStore
from gateway.accounts.store import User, UsernameTaken, UserStore, ValidationError
from gateway.config import POSTGRES_SCHEMES, ConfigError, load_settings
from gateway.state import EXTENSION

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A postgresql:// URL of a database created for this test session, dropped after it."""
    with postgres_database() as url:
        yield url


def _drop_users_table(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")


@pytest.fixture(params=["sqlite", "postgres"])
def database(request) -> str:
    """An empty database for one test: SQLite :memory:, or the session's PostgreSQL one."""
    if request.param == "sqlite":
        return ":memory:"
    return _empty_postgres(request)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_database(request, tmp_path) -> str:
    """An empty database that outlives its store: a SQLite file, or PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "users.db")
    return _empty_postgres(request)


def _empty_postgres(request) -> str:
    url = request.getfixturevalue("postgres_url")
    _drop_users_table(url)  # the store must create its schema itself
    return url


@pytest.fixture
def make_store():
    """Open stores on a database (path or URL); every one is closed after the test."""
    stores: list[UserStore] = []

    def make(target: str, cpu: CpuPool | None = None) -> UserStore:
        if target.startswith(POSTGRES_SCHEMES):
            from gateway.accounts.postgres import PostgresUserStore

            store = PostgresUserStore(target, cpu)
        else:
            store = SqliteUserStore(target, cpu)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store, database) -> UserStore:
    """A store on an empty database."""
    return make_store(database)


class RecordingCpu(CpuPool):
    """A CpuPool that notes the name of every function it runs."""

    def __init__(self) -> None:
        super().__init__(1)
        self.calls: list[str] = []

    def run(self, func, *args):
        self.calls.append(func.__name__)
        return super().run(func, *args)


def _join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=60)
    assert not [thread for thread in threads if thread.is_alive()], "threads still running"


# --- the contract -----------------------------------------------------------------------------


def test_register_then_get_returns_the_same_account(store):
    user = store.register("alice", PASSWORD, "alice@example.com")
    assert (user.username, user.email) == ("alice", "alice@example.com")
    assert user.created_at == user.updated_at
    assert store.get(user.id) == user  # timestamps included, to the bit


def test_register_without_email_stores_none(store):
    user = store.register("noemail", PASSWORD, None)
    assert user.email is None
    assert store.get(user.id).email is None


def test_authenticate_with_the_right_password_returns_the_account(store):
    user = store.register("carol", PASSWORD, None)
    assert store.authenticate("carol", PASSWORD) == user


def test_wrong_password_and_unknown_user_both_return_none(store):
    store.register("dave", PASSWORD, None)
    assert store.authenticate("dave", PASSWORD + "!") is None
    assert store.authenticate("nobody", PASSWORD) is None
    assert store.authenticate("", PASSWORD) is None


def test_get_of_an_unknown_id_is_none(store):
    store.register("erin", PASSWORD, None)
    assert store.get(uuid.uuid4().hex) is None
    assert store.get("not-a-uuid; DROP TABLE users") is None
    assert store.authenticate("erin", PASSWORD) is not None


def test_duplicate_username_is_refused_and_keeps_the_first_account(store):
    first = store.register("dup", "first-password", "first@example.com")
    with pytest.raises(UsernameTaken):
        store.register("dup", "second-password", "second@example.com")
    assert store.authenticate("dup", "first-password") == first
    assert store.authenticate("dup", "second-password") is None


def test_usernames_are_case_sensitive(store):
    upper = store.register("Bob", "upper-password", None)
    lower = store.register("bob", "lower-password", None)
    assert upper.id != lower.id
    assert store.authenticate("Bob", "upper-password") == upper
    assert store.authenticate("bob", "lower-password") == lower
    assert store.authenticate("bob", "upper-password") is None
    assert store.authenticate("BOB", "upper-password") is None


def test_hashing_runs_on_the_cpu_pool_and_unknown_users_cost_one_check(make_store, database):
    cpu = RecordingCpu()
    store = make_store(database, cpu)
    store.register("frank", PASSWORD, None)
    assert cpu.calls == ["generate_password_hash"]
    cpu.calls.clear()
    store.authenticate("frank", PASSWORD)
    store.authenticate("frank", "wrong-password")
    store.authenticate("nobody", PASSWORD)
    assert cpu.calls == ["check_password_hash"] * 3


def test_concurrent_registrations_of_one_name_let_exactly_one_win(store):
    barrier = threading.Barrier(10, timeout=30)
    outcomes: dict[int, object] = {}

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = store.register("race", f"password-{index}", None)
        except UsernameTaken:
            outcomes[index] = "taken"
        except Exception as exc:  # reported by the assertions below
            outcomes[index] = exc

    threads = [threading.Thread(target=attempt, args=(index,)) for index in range(10)]
    for thread in threads:
        thread.start()
    _join_all(threads)
    winners = {index: user for index, user in outcomes.items() if isinstance(user, User)}
    assert len(winners) == 1, outcomes
    assert list(outcomes.values()).count("taken") == 9, outcomes
    [(index, user)] = winners.items()
    assert store.authenticate("race", f"password-{index}") == user


def test_accounts_survive_a_restart(make_store, durable_database):
    first = make_store(durable_database)
    user = first.register("kept", PASSWORD, "kept@example.com")
    first.close()
    again = make_store(durable_database)
    assert again.get(user.id) == user
    assert again.authenticate("kept", PASSWORD) == user


# --- roles and account management -------------------------------------------------------------


def test_a_new_account_is_a_user(store):
    user = store.register("plain", PASSWORD, None)
    assert user.role == "user"
    assert store.get(user.id).role == "user"
    assert store.find("plain").role == "user"
    assert store.authenticate("plain", PASSWORD).role == "user"


def test_register_can_create_an_admin_and_refuses_other_roles(store):
    admin = store.register("boss", PASSWORD, None, "admin")
    assert admin.role == "admin"
    assert store.get(admin.id) == admin
    with pytest.raises(ValidationError, match="role"):
        store.register("root", PASSWORD, None, "root")
    assert store.find("root") is None


def test_set_role_round_trip(store):
    user = store.register("climber", PASSWORD, "c@example.com")
    time.sleep(0.01)
    promoted = store.set_role("climber", "admin")
    assert promoted.role == "admin"
    assert (promoted.id, promoted.username, promoted.email) == (user.id, "climber", "c@example.com")
    assert promoted.created_at == user.created_at
    assert promoted.updated_at > user.updated_at
    # Every read returns the account exactly as set_role returned it.
    assert store.get(user.id) == promoted
    assert store.find("climber") == promoted
    assert store.authenticate("climber", PASSWORD) == promoted
    assert store.get_many([user.id]) == {user.id: promoted}
    assert store.list_users() == [promoted]

    demoted = store.set_role("climber", "user")
    assert demoted.role == "user"
    assert demoted.updated_at >= promoted.updated_at
    assert store.get(user.id) == demoted


def test_set_role_of_an_unknown_user_is_none_and_a_bad_role_is_refused(store):
    user = store.register("steady", PASSWORD, None)
    assert store.set_role("nobody", "admin") is None
    assert store.set_role("Steady", "admin") is None  # case-sensitive, like every lookup
    for role in ("root", "Admin", "", None):
        with pytest.raises(ValidationError, match="role"):
            store.set_role("steady", role)
    assert store.get(user.id) == user  # untouched: not even updated_at


def test_find_is_exact_and_returns_no_secret(store):
    user = store.register("finder", PASSWORD, "f@example.com")
    assert store.find("finder") == user
    assert store.find("Finder") is None
    assert store.find("nobody") is None
    assert store.find("") is None
    assert not [name for name in User.__slots__ if "hash" in name or "pass" in name]


def test_get_many_returns_the_known_ids_only(store):
    users = [store.register(name, PASSWORD, None) for name in ("m1", "m2", "m3")]
    ids = [user.id for user in users]
    found = store.get_many([ids[0], ids[2], ids[0], uuid.uuid4().hex, "", "x'); --"])
    assert found == {ids[0]: users[0], ids[2]: users[2]}
    assert store.get_many(user.id for user in users) == dict(zip(ids, users, strict=True))
    assert store.get_many([]) == {}
    assert store.get_many(set()) == {}
    # Far more ids than SQLite allows parameters in one statement (999 in old builds).
    many = [uuid.uuid4().hex for _ in range(40_000)] + [ids[1]]
    assert store.get_many(many) == {ids[1]: users[1]}


def test_get_many_is_one_query_on_sqlite():
    store = SqliteUserStore(":memory:")
    try:
        ids = [store.register(f"q{index}", PASSWORD, None).id for index in range(5)]
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        assert len(store.get_many(ids)) == 5
        assert len(statements) == 1, statements
    finally:
        store.close()


def test_list_users_is_sorted_by_username_in_byte_order(store):
    assert store.list_users() == []
    names = ["bob", "Alice", "alice", "_under", "0zero", "Bob", "a.b", "a@b"]
    users = {name: store.register(name, PASSWORD, None) for name in names}
    store.set_role("bob", "admin")
    listed = store.list_users()
    assert [user.username for user in listed] == sorted(names)
    assert {user.username: user for user in listed} == users | {"bob": store.find("bob")}
    assert store.find("bob").role == "admin"


def test_delete_removes_the_account_and_only_it(store):
    gone = store.register("leaver", PASSWORD, None)
    kept = store.register("stayer", PASSWORD, None)
    assert store.delete("Leaver") is False  # case-sensitive
    assert store.delete("leaver") is True
    assert store.get(gone.id) is None
    assert store.find("leaver") is None
    assert store.authenticate("leaver", PASSWORD) is None
    assert store.get_many([gone.id, kept.id]) == {kept.id: kept}
    assert store.list_users() == [kept]
    assert store.delete("leaver") is False
    assert store.delete("nobody") is False
    # The name is free again: a new account, not the old one.
    again = store.register("leaver", PASSWORD, None)
    assert again.id != gone.id


# --- migrating a database made before roles -----------------------------------------------------

_OLD_SQLITE_SCHEMA = (
    "CREATE TABLE users ("
    " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
    " password_hash TEXT NOT NULL, created_at REAL NOT NULL,"
    " updated_at REAL NOT NULL)"
)
_OLD_POSTGRES_SCHEMA = (
    "CREATE TABLE users ("
    " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
    " password_hash TEXT NOT NULL,"
    " created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
)
# Exact in a double and in microseconds, so both stores give it back to the bit.
_OLD_MOMENT = 1_700_000_000.25


def _create_old_table(target: str, accounts: list[tuple[str, str, str | None]]) -> None:
    """Create the users table of the version before roles, holding (id, username, email)."""
    password_hash = generate_password_hash(PASSWORD)
    if target.startswith(POSTGRES_SCHEMES):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(_OLD_POSTGRES_SCHEMA)
            for account in accounts:
                conn.execute(
                    "INSERT INTO users VALUES (%s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s))",
                    (*account, password_hash, _OLD_MOMENT, _OLD_MOMENT),
                )
        return
    db = sqlite3.connect(target, isolation_level=None)
    try:
        db.execute(_OLD_SQLITE_SCHEMA)
        for account in accounts:
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                (*account, password_hash, _OLD_MOMENT, _OLD_MOMENT),
            )
    finally:
        db.close()


def _write_role(target: str, username: str, role: str) -> None:
    """Set a role with raw SQL, past the store's validation."""
    if target.startswith(POSTGRES_SCHEMES):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("UPDATE users SET role = %s WHERE username = %s", (role, username))
        return
    db = sqlite3.connect(target, isolation_level=None)
    try:
        db.execute("UPDATE users SET role = ? WHERE username = ?", (role, username))
    finally:
        db.close()


def test_a_table_without_roles_is_migrated_on_start_up(make_store, durable_database):
    _create_old_table(durable_database, [("id-old", "old", "old@example.com"), ("id-b", "b", None)])
    store = make_store(durable_database)
    old = User("id-old", "old", "old@example.com", _OLD_MOMENT, _OLD_MOMENT, "user")
    assert store.find("old") == old
    assert store.get("id-old") == old
    assert store.authenticate("old", PASSWORD) == old  # the old hash still works
    assert [user.username for user in store.list_users()] == ["b", "old"]
    promoted = store.set_role("old", "admin")
    assert promoted.role == "admin"
    new = store.register("new", PASSWORD, None)
    store.close()

    # Opening the migrated database again changes nothing.
    again = make_store(durable_database)
    assert again.find("old") == promoted
    assert again.get(new.id) == new
    # The database itself refuses a role outside ("user", "admin").
    refused = (sqlite3.IntegrityError,)
    if durable_database.startswith(POSTGRES_SCHEMES):
        import psycopg

        refused = (psycopg.errors.CheckViolation,)
    with pytest.raises(refused):
        _write_role(durable_database, "new", "root")
    assert again.find("new") == new


def test_the_migration_adds_one_column_and_one_check_in_postgres(make_store, postgres_url):
    import psycopg

    _drop_users_table(postgres_url)
    _create_old_table(postgres_url, [("id-1", "one", None)])
    for _ in range(3):
        make_store(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        columns = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'users'::regclass"
            " AND attname = 'role' AND NOT attisdropped"
        ).fetchone()[0]
        checks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass"
            " AND contype = 'c'"
        ).fetchone()[0]
    assert (columns, checks) == (1, 1)


def _start_at_once(make_store, url: str, count: int) -> list[Exception]:
    """Open `count` stores on `url` at the same moment, as workers starting together do."""
    barrier = threading.Barrier(count, timeout=30)
    failures: list[Exception] = []

    def start() -> None:
        barrier.wait()
        try:
            make_store(url)
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    _join_all(threads)
    return failures


def test_workers_starting_at_once_on_an_old_postgres_table_all_start(make_store, postgres_url):
    _drop_users_table(postgres_url)
    _create_old_table(postgres_url, [("id-1", "early", None)])
    failures = _start_at_once(make_store, postgres_url, 8)
    assert not failures, failures
    assert make_store(postgres_url).find("early").role == "user"


def test_workers_starting_at_once_on_an_old_sqlite_file_all_start(tmp_path):
    for attempt in range(5):
        path = str(tmp_path / f"old-{attempt}.db")
        _create_old_table(path, [(f"id-{attempt}", f"early{attempt}", None)])
        stores, failures = _open_at_once(path, 8)
        try:
            assert not failures, failures
            assert stores[0].find(f"early{attempt}").role == "user"
            assert stores[-1].set_role(f"early{attempt}", "admin").role == "admin"
        finally:
            for store in stores:
                store.close()


# --- PostgreSQL only ----------------------------------------------------------------------------


def test_workers_starting_at_once_all_find_the_schema(make_store, postgres_url):
    _drop_users_table(postgres_url)
    failures = _start_at_once(make_store, postgres_url, 8)
    assert not failures
    assert make_store(postgres_url).register("after", PASSWORD, None).username == "after"


def test_two_stores_on_one_postgres_database_share_accounts(make_store, postgres_url):
    _drop_users_table(postgres_url)
    one, other = make_store(postgres_url), make_store(postgres_url)
    user = one.register("shared", PASSWORD, None)
    assert other.authenticate("shared", PASSWORD) == user
    with pytest.raises(UsernameTaken):
        other.register("shared", PASSWORD, None)


def test_rest_register_login_profile_with_a_postgres_database_url(make_app, postgres_url):
    from gateway.accounts.postgres import PostgresUserStore

    _drop_users_table(postgres_url)
    app = make_app(DATABASE_URL=postgres_url)
    assert isinstance(app.extensions[EXTENSION].users, PostgresUserStore)
    client = app.test_client()
    body = {"username": "pguser", "password": PASSWORD, "email": "pg@example.com"}
    registered = client.post("/users/register", json=body)
    assert registered.status_code == 201, registered.get_json()
    user = registered.get_json()["user"]
    assert client.post("/users/register", json=body).status_code == 409

    # Another worker (another app on the same database) knows the account.
    other = make_app(DATABASE_URL=postgres_url).test_client()
    login = other.post("/users/login", json={"username": "pguser", "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    assert login.get_json()["user"] == user
    wrong = other.post("/users/login", json={"username": "pguser", "password": "nope-nope"})
    assert wrong.status_code == 401

    token = login.get_json()["token"]
    profile = client.get("/users/profile", headers={"Authorization": f"Bearer {token}"})
    assert profile.status_code == 200
    assert profile.get_json() == {"user": user}


# --- gevent -------------------------------------------------------------------------------------

_WAIT_ON_A_LOCKED_TABLE = """
import sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from gateway.accounts.postgres import PostgresUserStore

store = PostgresUserStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # the test holds a lock on the users table now
ticks = 0

def tick():
    global ticks
    while True:
        gevent.sleep(0.01)
        ticks += 1

gevent.spawn(tick)
started = time.monotonic()
store.get("nobody")
print(ticks, time.monotonic() - started, flush=True)
store.close()
"""


def _read_line(child: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            child.kill()
            pytest.fail(f"no line from the child in {timeout} s: {child.communicate()[1]}")
    return child.stdout.readline()


def test_a_query_waiting_on_postgres_lets_other_greenlets_run(postgres_url, make_store):
    import psycopg

    make_store(postgres_url)  # the schema exists before the child starts
    child = subprocess.Popen(
        [sys.executable, "-c", _WAIT_ON_A_LOCKED_TABLE, postgres_url],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _read_line(child, 60).strip() == "ready"
        with psycopg.connect(postgres_url) as locker:
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            child.stdin.write("go\n")
            child.stdin.flush()
            threading.Event().wait(1.0)
            locker.rollback()
        ticks, waited = _read_line(child, 30).split()
    finally:
        child.kill()
        child.communicate(timeout=10)
    assert float(waited) > 0.5  # the query really waited for the lock...
    assert int(ticks) >= 20  # ...while the other greenlet kept running (~100 ticks)


_IMPORT_TOO_EARLY = """
import psycopg
from gevent import monkey
monkey.patch_all()
from gateway.accounts.postgres import PostgresUserStore

PostgresUserStore("postgresql://127.0.0.1:1/never-reached")
"""


def test_psycopg_imported_before_gevent_patching_is_refused():
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_TOO_EARLY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "imported before gevent patched" in result.stderr, result.stderr


# --- choosing the store -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["postgresql://gw:pw@db.example:5432/gateway", "postgres://db.example/gateway"]
)
def test_postgres_database_urls_are_accepted(url):
    assert load_settings({"JWT_SECRET_KEY": "k" * 32, "DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url",
    ["mysql://gw:s3cr3t@db/gateway", "redis://localhost/0", "sqlite://users.db", "pg://db/x"],
)
def test_other_database_urls_are_refused_naming_the_variable(url):
    with pytest.raises(ConfigError, match="DATABASE_URL") as refused:
        load_settings({"JWT_SECRET_KEY": "k" * 32, "DATABASE_URL": url})
    assert "s3cr3t" not in str(refused.value)


@pytest.mark.parametrize(
    "url", [":memory:", "sqlite:///", "{tmp}/users.db", "sqlite:///{tmp}/u.db"]
)
def test_sqlite_stays_the_store_for_paths(make_app, tmp_path, url):
    app = make_app(DATABASE_URL=url.format(tmp=tmp_path))
    assert isinstance(app.extensions[EXTENSION].users, SqliteUserStore)


def test_connections_cut_by_the_server_are_replaced(make_store, postgres_url):
    import psycopg

    _drop_users_table(postgres_url)
    store = make_store(postgres_url)
    user = store.register("survivor", PASSWORD, None)
    # What a PostgreSQL restart or an idle-connection reaper does to the pool's connections.
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert cut >= 1
    assert store.authenticate("survivor", PASSWORD) == user
    assert store.get(user.id) == user


def _open_at_once(path: str, count: int) -> tuple[list[SqliteUserStore], list[Exception]]:
    """Open `count` stores on `path` from as many threads released at the same moment."""
    barrier = threading.Barrier(count, timeout=30)
    stores: list[SqliteUserStore] = []
    failures: list[Exception] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(SqliteUserStore(path))
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    _join_all(threads)
    return stores, failures


def test_workers_starting_at_once_on_one_sqlite_file_all_start(tmp_path):
    """Several gunicorn workers open one SQLite file at boot (WAL switch + schema) at once."""
    for attempt in range(10):
        stores, failures = _open_at_once(str(tmp_path / f"users-{attempt}.db"), 8)
        assert not failures, failures
        user = stores[0].register(f"u{attempt}", PASSWORD, None)
        assert stores[-1].authenticate(f"u{attempt}", PASSWORD) == user
        for store in stores:
            store.close()
