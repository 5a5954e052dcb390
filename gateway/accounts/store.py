"""User accounts (docs/rest-api.md): validation, password hashing and the store contract.

Implementations sit beside this module: `sqlite.SqliteUserStore` (the default) and
`postgres.PostgresUserStore` (for `DATABASE_URL=postgresql://...`, shared by every
worker and host). The blueprints only ever see `UserStore`.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

from werkzeug.security import check_password_hash, generate_password_hash

from gateway.accounts.offload import CpuPool

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


class UserStore(ABC):
    """Persistent accounts, safe to call from many threads or greenlets at once.

    Contract, for every implementation:
    - `register` creates the account or raises UsernameTaken; the database's unique
      constraint decides, so of N concurrent registrations of one name exactly one wins.
    - Usernames are case-sensitive: "Bob" and "bob" are two accounts.
    - `authenticate` returns None for a wrong password and for an unknown user alike, after
      the same password check, so neither the answer nor its timing tells them apart.
    - `get` and `authenticate` return the account exactly as `register` returned it,
      timestamps included, from any process sharing the database, and after a restart.
    - Password hashing and checking run on the CpuPool, never on the event loop.
    - The schema is created on start-up if missing, safely when several workers start at once.

    Implementations fill in the storage hooks; hashing lives here, once for all of them.
    """

    def __init__(self, cpu: CpuPool | None = None) -> None:
        self._cpu = cpu or CpuPool()

    def register(self, username: str, password: str, email: str | None) -> User:
        """Create an account; raise UsernameTaken if the name exists."""
        password_hash = self._cpu.run(generate_password_hash, password)
        now = time.time()
        return self._insert(User(uuid.uuid4().hex, username, email, now, now), password_hash)

    def authenticate(self, username: str, password: str) -> User | None:
        """Return the user if the password matches, else None (same cost either way)."""
        found = self._find(username)
        stored = found[1] if found else _dummy_hash()
        if not self._cpu.run(check_password_hash, stored, password) or found is None:
            return None
        return found[0]

    def ping(self) -> None:
        """Make one round trip to the database; raise if it cannot be reached."""
        self.get("")  # no account has an empty id: a cheap query that always runs

    @abstractmethod
    def get(self, user_id: str) -> User | None:
        """Return the user with this id, or None."""

    @abstractmethod
    def close(self) -> None:
        """Release the database connections."""

    @abstractmethod
    def _insert(self, user: User, password_hash: str) -> User:
        """Store a new account and return it as stored; raise UsernameTaken on a duplicate."""

    @abstractmethod
    def _find(self, username: str) -> tuple[User, str] | None:
        """Return the account with this exact username and its password hash, or None."""
