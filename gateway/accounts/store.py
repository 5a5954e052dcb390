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
from collections.abc import Iterable
from dataclasses import dataclass

from werkzeug.security import check_password_hash, generate_password_hash

from gateway.accounts.offload import CpuPool

_USERNAME = re.compile(r"[A-Za-z0-9_.\-@]{1,64}")
# Every role an account can have; a new account is a "user".
ROLES = ("user", "admin")


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
    role: str = "user"


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


def validate_role(role: object) -> str:
    """Return `role` if it is one of ROLES, or raise ValidationError."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


class UserStore(ABC):
    """Persistent accounts, safe to call from many threads or greenlets at once.

    Contract, for every implementation:
    - `register` creates the account or raises UsernameTaken; the database's unique
      constraint decides, so of N concurrent registrations of one name exactly one wins.
    - Usernames are case-sensitive: "Bob" and "bob" are two accounts.
    - Every account has a role, one of ROLES: "user" unless registered or set otherwise.
      `set_role` (and `register`) raise ValidationError for any other value; the database
      refuses it too, where it can (a CHECK constraint).
    - `authenticate` returns None for a wrong password and for an unknown user alike, after
      the same password check, so neither the answer nor its timing tells them apart.
    - `get`, `find`, `get_many`, `list_users` and `authenticate` return the account exactly
      as `register` (or the latest `set_role`) returned it, timestamps included, from any
      process sharing the database, and after a restart.
    - `get_many` answers with one query, however many ids; unknown ids are left out.
    - `list_users` is sorted by username, byte order ("Bob" before "alice"), in every store.
    - `set_role` updates `updated_at`; it and `delete` report an unknown username (None,
      False) rather than raising.
    - Password hashing and checking run on the CpuPool, never on the event loop.
    - The schema is created on start-up if missing, and a database of an earlier version
      is migrated (the role column added), safely when several workers start at once.

    Implementations fill in the storage hooks; hashing and validation live here, once for
    all of them.
    """

    def __init__(self, cpu: CpuPool | None = None) -> None:
        self._cpu = cpu or CpuPool()

    def register(self, username: str, password: str, email: str | None, role: str = "user") -> User:
        """Create an account; raise UsernameTaken if the name exists."""
        validate_role(role)
        password_hash = self._cpu.run(generate_password_hash, password)
        now = time.time()
        user = User(uuid.uuid4().hex, username, email, now, now, role)
        return self._insert(user, password_hash)

    def authenticate(self, username: str, password: str) -> User | None:
        """Return the user if the password matches, else None (same cost either way)."""
        found = self._find(username)
        stored = found[1] if found else _dummy_hash()
        if not self._cpu.run(check_password_hash, stored, password) or found is None:
            return None
        return found[0]

    def find(self, username: str) -> User | None:
        """Return the account with this exact username, or None."""
        found = self._find(username)
        return found[0] if found else None

    def set_role(self, username: str, role: str) -> User | None:
        """Give the account `role` and return it updated; None if there is no such account.

        Raise ValidationError if `role` is not one of ROLES.
        """
        return self._set_role(username, validate_role(role), time.time())

    def ping(self) -> None:
        """Make one round trip to the database; raise if it cannot be reached."""
        self.get("")  # no account has an empty id: a cheap query that always runs

    @abstractmethod
    def get(self, user_id: str) -> User | None:
        """Return the user with this id, or None."""

    @abstractmethod
    def get_many(self, user_ids: Iterable[str]) -> dict[str, User]:
        """Return {id: user} for the ids that exist, in one query (to name owners, members)."""

    @abstractmethod
    def list_users(self) -> list[User]:
        """Return every account, sorted by username (byte order)."""

    @abstractmethod
    def delete(self, username: str) -> bool:
        """Delete the account with this exact username; False if there was none."""

    @abstractmethod
    def close(self) -> None:
        """Release the database connections."""

    @abstractmethod
    def _insert(self, user: User, password_hash: str) -> User:
        """Store a new account and return it as stored; raise UsernameTaken on a duplicate."""

    @abstractmethod
    def _find(self, username: str) -> tuple[User, str] | None:
        """Return the account with this exact username and its password hash, or None."""

    @abstractmethod
    def _set_role(self, username: str, role: str, updated_at: float) -> User | None:
        """Store a (valid) role and updated_at for this username; the user, or None."""
