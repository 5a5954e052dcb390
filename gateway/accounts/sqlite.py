"""SqliteUserStore: accounts in one SQLite file (or `:memory:`), the embedded default."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterable

from gateway.accounts.offload import CpuPool
from gateway.accounts.store import User, UsernameTaken, UserStore

# How long a store waits for other processes setting up the same file.
_SETUP_SECONDS = 15.0
# The role column, in CREATE TABLE and in the migration of a table made before roles.
_ROLE = "role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin'))"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users ("
    " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
    " password_hash TEXT NOT NULL, created_at REAL NOT NULL,"
    f" updated_at REAL NOT NULL, {_ROLE})"
)
# The columns of a User, in its fields' order.
_COLUMNS = "id, username, email, created_at, updated_at, role"


class SqliteUserStore(UserStore):
    """Accounts in SQLite: one connection shared behind a lock (a file or `:memory:`)."""

    def __init__(self, path: str, cpu: CpuPool | None = None) -> None:
        super().__init__(cpu)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._set_up(path != ":memory:")

    def _set_up(self, wal: bool) -> None:
        """Switch to WAL, create the schema and migrate it, waiting out other processes.

        Workers booting at once all do this on one file. The WAL switch needs an exclusive
        lock and SQLite may answer "database is locked" at once, without its busy timeout,
        when two connections would otherwise deadlock: so retry for a while. The schema is
        created and migrated in one write transaction (BEGIN IMMEDIATE), so of several
        workers finding a table without the role column exactly one adds it.
        """
        deadline = time.monotonic() + _SETUP_SECONDS
        while True:
            try:
                if wal:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(_SCHEMA)
                    columns = {row[1] for row in self._db.execute("PRAGMA table_info(users)")}
                    if "role" not in columns:  # a database made before roles
                        self._db.execute(f"ALTER TABLE users ADD COLUMN {_ROLE}")
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    def _insert(self, user: User, password_hash: str) -> User:
        try:
            with self._lock:
                self._db.execute(
                    f"INSERT INTO users ({_COLUMNS}, password_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        user.id,
                        user.username,
                        user.email,
                        user.created_at,
                        user.updated_at,
                        user.role,
                        password_hash,
                    ),
                )
        except sqlite3.IntegrityError:
            raise UsernameTaken(user.username) from None
        return user

    def _find(self, username: str) -> tuple[User, str] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS}, password_hash FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return (User(*row[:6]), row[6]) if row else None

    def get(self, user_id: str) -> User | None:
        """Return the user with this id, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        return User(*row) if row else None

    def get_many(self, user_ids: Iterable[str]) -> dict[str, User]:
        """Return {id: user} for the ids that exist, in one query."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return {}
        # One JSON array parameter rather than one "?" per id: no limit on the count.
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM users WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            ).fetchall()
        return {row[0]: User(*row) for row in rows}

    def list_users(self) -> list[User]:
        """Return every account, sorted by username (byte order)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM users ORDER BY username").fetchall()
        return [User(*row) for row in rows]

    def _set_role(self, username: str, role: str, updated_at: float) -> User | None:
        with self._lock:
            # fetchall, not fetchone: the statement must run to its end to finish the write.
            rows = self._db.execute(
                f"UPDATE users SET role = ?, updated_at = ? WHERE username = ? RETURNING {_COLUMNS}",
                (role, updated_at, username),
            ).fetchall()
        return User(*rows[0]) if rows else None

    def delete(self, username: str) -> bool:
        """Delete the account with this exact username; False if there was none."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM users WHERE username = ?", (username,))
        return cursor.rowcount > 0

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
