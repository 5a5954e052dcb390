"""Test helper: find the real services tests need, or say why not (skip; fail under CI).

PostgreSQL comes from TEST_POSTGRES_URL (a postgresql:// URL of a user who may create
databases), else from the local server as user postgres or root.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

LOCAL_POSTGRES = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


def in_ci() -> bool:
    """Tell whether this run is CI (CI set to anything but a false value)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str):
    """Skip with the reason, or fail under CI: CI never passes without its services."""
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this fails instead of skipping")
    pytest.skip(reason)


def redacted(url: str) -> str:
    """Return `url` with its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def postgres_admin_url() -> str:
    """Return the URL of a reachable PostgreSQL server that may create databases."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install -r requirements.txt)")
    configured = os.environ.get("TEST_POSTGRES_URL", "").strip()
    failures = []
    for url in [configured] if configured else LOCAL_POSTGRES:
        try:
            with psycopg.connect(url, connect_timeout=5):
                return url
        except psycopg.Error as exc:
            failures.append(f"{redacted(url)}: {str(exc).strip()}")
    unavailable(
        "no PostgreSQL server reachable (set TEST_POSTGRES_URL to use another one): "
        + "; ".join(failures)
    )


@contextlib.contextmanager
def postgres_database(prefix: str = "gateway_test") -> Iterator[str]:
    """Yield the URL of a new, uniquely named database; drop it (even if in use) afterwards."""
    admin_url = postgres_admin_url()
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))
