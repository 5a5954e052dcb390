"""Fixtures for the fast tests: a fresh in-memory app per test, and users registered over REST."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.state import get_user_store

# 64+ bytes, so that even an HS512 token signed with it is a fair test of "HS256 only".
SECRET = "test-secret-" + "0123456789abcdef" * 4
PASSWORD = "correct horse battery"
# Tests register many users and publish freely: limits are off unless a test sets them.
LIMITS_OFF = {
    "LOGIN_RATE_LIMIT": "0",
    "PUBLISH_RATE_LIMIT": "0",
    "MAX_TOPICS_PER_USER": "0",
    "MAX_CONNECTIONS_PER_USER": "0",
}


@pytest.fixture
def jwt_secret() -> str:
    """Return the JWT_SECRET_KEY every test app is built with."""
    return SECRET


@pytest.fixture
def make_app() -> Callable[..., Flask]:
    """Build extra apps with per-test settings: make_app(RING_BUFFER_SIZE="3")."""
    apps: list[Flask] = []

    def make(**settings: str) -> Flask:
        config = {"JWT_SECRET_KEY": SECRET, "DATABASE_URL": ":memory:"} | LIMITS_OFF | settings
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            get_user_store().close()


@pytest.fixture
def app(make_app) -> Flask:
    """A fresh app with default settings and an empty in-memory database."""
    return make_app()


@pytest.fixture
def client(app) -> FlaskClient:
    """A test client for `app`."""
    return app.test_client()


@pytest.fixture
def make_user(client) -> Callable[..., str]:
    """Register a user through the API and return its token (hashing is slow: reuse users)."""
    names = itertools.count(1)

    def make(
        username: str | None = None,
        password: str = PASSWORD,
        email: str | None = None,
        client: FlaskClient = client,
    ) -> str:
        body = {"username": username or f"user{next(names)}", "password": password}
        if email is not None:
            body["email"] = email
        response = client.post("/users/register", json=body)
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.get_json()["token"]

    return make


@pytest.fixture
def auth_headers(make_user) -> Callable[..., dict[str, str]]:
    """Return Bearer headers for `token`, or for a newly registered user when none is given."""

    def headers(token: str | None = None, client: FlaskClient | None = None) -> dict[str, str]:
        if token is None:
            token = make_user() if client is None else make_user(client=client)
        return {"Authorization": f"Bearer {token}"}

    return headers
