"""Fixtures that start real gateway processes on free ports and clean them up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helpers live next to this file; make them importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server, register  # noqa: E402


@pytest.fixture
def server_factory(tmp_path):
    """Start servers with per-test settings: server_factory(env={...}, kind=..., args=(...), nofile=N)."""
    started: list[Server] = []

    def start(env=None, kind="gunicorn", args=(), wait=True, nofile=None, wrapper=()) -> Server:
        srv = Server(
            tmp_path, env=env, kind=kind, args=tuple(args), nofile=nofile, wrapper=tuple(wrapper)
        )
        started.append(srv)
        return srv.start() if wait else srv.launch()

    yield start
    for srv in started:
        srv.close()


@pytest.fixture(scope="session")
def gw(tmp_path_factory):
    """The shared gunicorn server with default settings (tests use unique topic names)."""
    srv = Server(tmp_path_factory.mktemp("shared"))
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session")
def token(gw):
    """A token for a user registered on the shared server."""
    return register(gw)
