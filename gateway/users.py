"""User accounts (SPEC §2.1): validation, password hashing and the SQLite store."""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass

from werkzeug.security import check_password_hash, generate_password_hash

from gateway.offload import CpuPool

_USERNAME = re.compile(r"[A-Za-z0-9_.\-@]{1,64}")


@functools.cache
def _dummy_hash() -> str:
    # Verifying against a real hash for unknown users makes "no such user" cost the same
    # time as "wrong password", so accounts cannot be probed by timing either.
    return generate_password_hash(uuid.uuid4().hex)


class ValidationError(Exception):
    """A registration field breaks the rules; the message says which and why."""


class UsernameTaken(Exception):
    """Another account already has this username."""


@dataclass(frozen=True, slots=True)
class User:
    """A stored account, without its password hash."""

    id: str
    username: str
    email: str | None
    created_at: float
    updated_at: float


def validate_registration(body: dict) -> tuple[str, str, str | None]:
    """Return (username, password, email) from a register body, or raise ValidationError."""
    username = body.get("username")
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise ValidationError("username must be 1-64 characters of ASCII letters, digits and _.-@")
    password = body.get("password")
    if not isinstance(password, str) or not 8 <= len(password.encode()) <= 72:
        raise ValidationError("password must be a string of 8-72 bytes")
    email = body.get("email")
    if email is not None:
        parts = email.split("@") if isinstance(email, str) else []
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValidationError("email must contain exactly one @ with text on both sides")
    return username, password, email


class UserStore:
    """Accounts in SQLite: one connection shared behind a lock (a file or `:memory:`)."""

    def __init__(self, path: str, cpu: CpuPool | None = None) -> None:
        self._cpu = cpu or CpuPool()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS users ("
            " id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT,"
            " password_hash TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )

    def register(self, username: str, password: str, email: str | None) -> User:
        """Create an account; raise UsernameTaken if the name exists."""
        password_hash = self._cpu.run(generate_password_hash, password)
        now = time.time()
        user = User(uuid.uuid4().hex, username, email, now, now)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                    (user.id, username, email, password_hash, now, now),
                )
        except sqlite3.IntegrityError:
            raise UsernameTaken(username) from None
        return user

    def authenticate(self, username: str, password: str) -> User | None:
        """Return the user if the password matches, else None (same cost either way)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, username, email, created_at, updated_at, password_hash"
                " FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        stored = row[5] if row else _dummy_hash()
        if not self._cpu.run(check_password_hash, stored, password) or row is None:
            return None
        return User(*row[:5])

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
