"""PostgresUserStore: accounts in PostgreSQL, shared by every worker and host (docs/operations.md "Scale-out with Redis")."""

from __future__ import annotations

import atexit
import selectors
import sys
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime

from gateway.accounts.offload import CpuPool
from gateway.accounts.store import User, UsernameTaken, UserStore

try:
    import psycopg
    from psycopg import errors, waiting
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - both are in requirements.txt
    raise ImportError(
        "DATABASE_URL is a PostgreSQL URL but psycopg is missing: "
        "pip install 'psycopg[binary]' psycopg-pool (see requirements.txt)"
    ) from exc

# Connections per worker: queries take well under a millisecond next to the ~50 ms of
# scrypt, so a handful covers a busy worker and leaves room for many workers under
# PostgreSQL's default max_connections of 100.
POOL_SIZE = 4
# Seconds a request waits for a free connection (or a reconnect) before failing.
POOL_TIMEOUT = 10.0
# Serialises schema creation and migration across workers: concurrent CREATE TABLE IF NOT
# EXISTS can fail with a unique violation on pg_type, and two workers adding one column
# would race too. Any fixed bigint works; this one spells it.
_SCHEMA_LOCK = int.from_bytes(b"gw-users", "big")
# The role column, in CREATE TABLE and in the migration of a table made before roles.
_ROLE = (
    "role TEXT NOT NULL DEFAULT 'user'"
    " CONSTRAINT users_role_check CHECK (role IN ('user', 'admin'))"
)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users ("
    " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
    " password_hash TEXT NOT NULL,"
    f" created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, {_ROLE})"
)
# Resolves "users" through the search_path, as the statements above and below do.
_HAS_ROLE = (
    "SELECT 1 FROM pg_attribute"
    " WHERE attrelid = 'users'::regclass AND attname = 'role' AND NOT attisdropped"
)
# A constant default: PostgreSQL 11+ adds the column without rewriting the table.
_ADD_ROLE = f"ALTER TABLE users ADD COLUMN IF NOT EXISTS {_ROLE}"
# The columns of a User, in its fields' order.
_COLUMNS = "id, username, email, created_at, updated_at, role"


class PostgresUserStore(UserStore):
    """Accounts in PostgreSQL through a small psycopg connection pool.

    A pool rather than one connection behind a lock: a slow query or a network stall holds
    one connection, not every login of the worker, and the pool checks each connection
    before lending it and reconnects in the background, so a database restart costs no
    worker its store. psycopg (3.1.14+) waits cooperatively once gevent has patched
    `select`, so under gunicorn's gevent worker a query parks only its own greenlet, and
    the pool's threads are greenlets too; under the Flask dev server they are real threads.
    """

    def __init__(self, url: str, cpu: CpuPool | None = None) -> None:
        super().__init__(cpu)
        _check_gevent_cooperation()
        # A plain connection first: a wrong host, database or password fails here with
        # PostgreSQL's own message instead of a pool timeout.
        # One transaction under the advisory lock: schema and migration, then commit.
        with psycopg.connect(url) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_SCHEMA)
            # Checked first so that a started-up database costs no ALTER TABLE, whose
            # ACCESS EXCLUSIVE lock would queue every query behind any long one.
            if conn.execute(_HAS_ROLE).fetchone() is None:  # a database made before roles
                conn.execute(_ADD_ROLE)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=POOL_TIMEOUT,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            name="users",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT)
        except BaseException:
            self._pool.close()
            raise
        # Left to the garbage collector, the pool stops its workers while the interpreter
        # (and under gevent, the hub) is being torn down, and prints a traceback.
        atexit.register(_close_at_exit, weakref.ref(self))

    def _insert(self, user: User, password_hash: str) -> User:
        moment = datetime.fromtimestamp(user.created_at, UTC)
        try:
            with self._pool.connection() as conn:
                row = conn.execute(
                    f"INSERT INTO users ({_COLUMNS}, password_hash)"
                    f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (user.id, user.username, user.email, moment, moment, user.role, password_hash),
                ).fetchone()
        except errors.UniqueViolation:
            raise UsernameTaken(user.username) from None
        # TIMESTAMPTZ keeps microseconds: return what was stored, so `get` matches exactly.
        return _user(row)

    def _find(self, username: str) -> tuple[User, str] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS}, password_hash FROM users WHERE username = %s",
                (username,),
            ).fetchone()
        return (_user(row[:6]), row[6]) if row else None

    def get(self, user_id: str) -> User | None:
        """Return the user with this id, or None."""
        with self._pool.connection() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,)).fetchone()
        return _user(row) if row else None

    def get_many(self, user_ids: Iterable[str]) -> dict[str, User]:
        """Return {id: user} for the ids that exist, in one query."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return {}
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM users WHERE id = ANY(%s)", (wanted,)
            ).fetchall()
        return {row[0]: _user(row) for row in rows}

    def list_users(self) -> list[User]:
        """Return every account, sorted by username (byte order)."""
        # COLLATE "C": byte order whatever the database's collation, as SQLite sorts.
        with self._pool.connection() as conn:
            rows = conn.execute(
                f'SELECT {_COLUMNS} FROM users ORDER BY username COLLATE "C"'
            ).fetchall()
        return [_user(row) for row in rows]

    def _set_role(self, username: str, role: str, updated_at: float) -> User | None:
        moment = datetime.fromtimestamp(updated_at, UTC)
        with self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE users SET role = %s, updated_at = %s WHERE username = %s"
                f" RETURNING {_COLUMNS}",
                (role, moment, username),
            ).fetchone()
        return _user(row) if row else None

    def delete(self, username: str) -> bool:
        """Delete the account with this exact username; False if there was none."""
        with self._pool.connection() as conn:
            cursor = conn.execute("DELETE FROM users WHERE username = %s", (username,))
        return cursor.rowcount > 0

    def close(self) -> None:
        """Close every pooled connection and stop the pool's workers."""
        self._pool.close()


def _user(row) -> User:
    user_id, username, email, created_at, updated_at, role = row
    return User(user_id, username, email, created_at.timestamp(), updated_at.timestamp(), role)


def _close_at_exit(store_ref: weakref.ref) -> None:
    store = store_ref()
    if store is not None:
        store.close()


def _check_gevent_cooperation() -> None:
    # psycopg picks its wait function when first imported. Imported before gevent patched
    # `select`, it keeps the C one, which blocks the whole worker on every query: refuse.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return
    blocking_wait = waiting.wait is getattr(waiting, "wait_c", None)
    blocking_connect = waiting.DefaultSelector is not selectors.DefaultSelector
    if blocking_wait or blocking_connect:
        raise RuntimeError(
            "psycopg was imported before gevent patched the standard library, so every "
            "PostgreSQL query would block the whole worker: import it only after patching"
        )
