"""SqliteUserStore: accounts in one SQLite file (or `:memory:`), the embedded default."""

from __future__ import annotations

import sqlite3
import threading

from gateway.offload import CpuPool
from gateway.users import User, UsernameTaken, UserStore


class SqliteUserStore(UserStore):
    """Accounts in SQLite: one connection shared behind a lock (a file or `:memory:`)."""

    def __init__(self, path: str, cpu: CpuPool | None = None) -> None:
        super().__init__(cpu)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS users ("
            " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
            " password_hash TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )

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
