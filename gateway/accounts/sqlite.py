"""SqliteUserStore: accounts in one SQLite file (or `:memory:`), the embedded default."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

from gateway.accounts.offload import CpuPool
from gateway.accounts.store import User, UsernameTaken, UserStore

# How long a store waits for other processes setting up the same file.
_SETUP_SECONDS = 15.0


class SqliteUserStore(UserStore):
    """Accounts in SQLite: one connection shared behind a lock (a file or `:memory:`)."""

    def __init__(self, path: str, cpu: CpuPool | None = None) -> None:
        super().__init__(cpu)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._set_up(path != ":memory:")

    def _set_up(self, wal: bool) -> None:
        """Switch to WAL and create the schema, waiting out other processes doing the same.

        Workers booting at once all do this on one file. The WAL switch needs an exclusive
        lock and SQLite may answer "database is locked" at once, without its busy timeout,
        when two connections would otherwise deadlock: so retry for a while.
        """
        deadline = time.monotonic() + _SETUP_SECONDS
        while True:
            try:
                if wal:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS users ("
                    " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
                    " password_hash TEXT NOT NULL, created_at REAL NOT NULL,"
                    " updated_at REAL NOT NULL)"
                )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    def _insert(self, user: User, password_hash: str) -> User:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        user.id,
                        user.username,
                        user.email,
                        password_hash,
                        user.created_at,
                        user.updated_at,
                    ),
                )
        except sqlite3.IntegrityError:
            raise UsernameTaken(user.username) from None
        return user

    def _find(self, username: str) -> tuple[User, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, username, email, created_at, updated_at, password_hash"
                " FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return (User(*row[:5]), row[5]) if row else None

    def get(self, user_id: str) -> User | None:
        """Return the user with this id, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, username, email, created_at, updated_at FROM users WHERE id = ?",
                (user_id,),
            ).fetchone()
        return User(*row) if row else None

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
