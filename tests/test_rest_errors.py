"""Error shapes, CORS, the WebSocket route over plain HTTP, and start-up config (docs/rest-api.md, docs/configuration.md)."""

from __future__ import annotations

import json
import logging

import orjson
import pytest

from gateway.app import create_app
from gateway.config import ConfigError
from gateway.state import get_broker

SECRET = "config-test-secret-0123456789abcdef0123456789"
PREFLIGHT = {
    "Origin": "https://a.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "Authorization, Content-Type",
}


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]


def assert_client_error(response):
    """A client mistake: some 4xx, in the one JSON error shape, never a 5xx."""
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert_error(response, response.status_code)


# --- Flask's own errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/users"),
        ("GET", "/users/x"),
        ("GET", "/topics/a/b"),
        ("GET", "/health/"),
        ("DELETE", "/topics/"),
    ],
)
def test_unknown_route_is_404_json(client, method, path):
    assert_error(client.open(path, method=method), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/topics"),
        ("DELETE", "/topics"),
        ("PATCH", "/topics"),
        ("DELETE", "/health"),
        ("POST", "/health"),
        ("PUT", "/stats"),
        ("GET", "/users/register"),
        ("GET", "/users/login"),
        ("POST", "/users/profile"),
        ("GET", "/topics/a"),
        ("POST", "/topics/a"),
        ("PUT", "/topics/a"),
    ],
)
def test_wrong_method_is_405_json_with_allow_header(client, method, path):
    response = client.open(path, method=method)
    assert_error(response, 405)
    assert response.headers.get("Allow")


# --- no 5xx for any client mistake ----------------------------------------------------------

BAD_BODIES = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b"0",
    b"-1",
    b"true",
    b'"str"',
    b"{",
    b"}",
    b"{]",
    b"\x00",
    b"\xff\xfe\xfd",
    b"\xef\xbb\xbf{}",
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b"1e999",
    b'{"name": 1e999}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"username": "\\ud800", "password": "\\udfff\\udfff\\udfff\\udfff"}',
    b'{"username": "ok", "password": "12345678", "email": "\\ud800@x"}',
    b'{"username": "ok\\u0000", "password": "12345678"}',
    b'{"username": {"$gt": ""}, "password": {"$gt": ""}}',
    b'{"username": "ok", "password": "12345678", "email": {"a": 1}}',
    b'{"username": 1e400, "password": 12345678}',
    b'{"name": "\\ud800"}',
    b'{"name": "a\\u0000"}',
    b'{"name": {}}',
    b'{"name": ["a"]}',
    b'{"name": "' + b"x" * 10000 + b'"}',
]


@pytest.mark.parametrize("data", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_bodies_never_get_a_5xx(client, auth_headers, data):
    headers = auth_headers()
    for path in ("/users/register", "/users/login", "/topics"):
        for content_type in ("application/json", None):
            response = client.post(path, data=data, headers=headers, content_type=content_type)
            assert_client_error(response)


@pytest.mark.parametrize(
    "path",
    [
        "/topics/%00",
        "/topics/%FF",
        "/topics/caf%C3%A9",
        "/topics/" + "x" * 5000,
        "/topics/a%2Fb",
        "/topics/..",
        "/topics/%20",
    ],
)
def test_odd_topic_paths_in_delete_never_get_a_5xx(client, auth_headers, path):
    assert_client_error(client.delete(path, headers=auth_headers()))


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "x" * 20000,
        "Bearer é",
        "Bearer \x00",
        "Bearer eyJ.eyJ.",
        "Bearer ..",
        "Bearer e30.e30.e30",
        "Bearer " + "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    ],
)
def test_odd_authorization_headers_are_401_never_5xx(client, authorization):
    for path in ("/topics", "/users/profile"):
        assert_error(client.get(path, headers={"Authorization": authorization}), 401)


# --- CORS -----------------------------------------------------------------------------------


def test_preflight_needs_no_token_and_allows_the_origin(client):
    response = client.options("/topics", headers=PREFLIGHT)
    assert response.status_code < 300
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://a.example")


def test_preflight_lets_a_browser_send_an_authorized_post_by_default(client):
    # A browser only sends the real request if the preflight allows its method and headers.
    response = client.options("/topics", headers=PREFLIGHT)
    methods = response.headers.get("Access-Control-Allow-Methods", "")
    allowed = {m.strip().upper() for m in methods.split(",")}
    assert "POST" in allowed or "*" in allowed, dict(response.headers)
    # The Fetch standard never lets "*" stand for Authorization: it must be named.
    headers = response.headers.get("Access-Control-Allow-Headers", "").lower()
    assert "authorization" in {h.strip() for h in headers.split(",")}, dict(response.headers)


def test_listed_origins_are_echoed_and_others_get_no_cors_header(make_app):
    client = make_app(ALLOWED_CORS_ORIGIN="https://a.example,https://b.example").test_client()
    for origin in ("https://a.example", "https://b.example"):
        preflight = client.options("/topics", headers=PREFLIGHT | {"Origin": origin})
        assert preflight.headers.get("Access-Control-Allow-Origin") == origin
        simple = client.get("/health", headers={"Origin": origin})
        assert simple.status_code == 200
        assert simple.headers.get("Access-Control-Allow-Origin") == origin
    for origin in ("https://c.example", "https://a.example.evil", "null"):
        preflight = client.options("/topics", headers=PREFLIGHT | {"Origin": origin})
        assert "Access-Control-Allow-Origin" not in preflight.headers
        simple = client.get("/health", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in simple.headers


def test_allowed_methods_follow_the_setting(make_app):
    client = make_app(ALLOWED_CORS_METHOD="GET,POST").test_client()
    post = client.options("/topics", headers=PREFLIGHT)
    allowed = {m.strip() for m in post.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in allowed and "DELETE" not in allowed
    delete = client.options(
        "/topics/x", headers=PREFLIGHT | {"Access-Control-Request-Method": "DELETE"}
    )
    methods = delete.headers.get("Access-Control-Allow-Methods", "")
    assert "DELETE" not in methods


# --- /ws over plain HTTP --------------------------------------------------------------------


def test_ws_without_upgrade_is_a_4xx_json_error(client, auth_headers):
    assert_client_error(client.get("/ws"))
    assert_client_error(client.get("/ws", headers=auth_headers()))


def test_ws_with_bad_token_is_401_before_any_upgrade(client):
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert_error(client.get("/ws", headers=upgrade), 401)
    assert_error(client.get("/ws?token=garbage", headers=upgrade), 401)


# --- configuration (docs/configuration.md) ----------------------------------------------------------------


def config(**settings):
    return {"JWT_SECRET_KEY": SECRET, "DATABASE_URL": ":memory:"} | settings


@pytest.mark.parametrize("settings", [{}, {"JWT_SECRET_KEY": ""}], ids=["missing", "empty"])
def test_missing_or_empty_secret_is_a_config_error(settings):
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app({"DATABASE_URL": ":memory:"} | settings)


def test_create_app_reads_only_its_test_config_not_the_environment(monkeypatch):
    monkeypatch.setenv("JWT_SECRET_KEY", SECRET)
    monkeypatch.setenv("RING_BUFFER_SIZE", "abc")
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app({"DATABASE_URL": ":memory:"})
    assert create_app(config()).test_client().get("/health").status_code == 200


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RING_BUFFER_SIZE", "abc"),
        ("RING_BUFFER_SIZE", "-1"),
        ("RING_BUFFER_SIZE", "1.5"),
        ("SUBSCRIBER_QUEUE_SIZE", "x"),
        ("SUBSCRIBER_QUEUE_SIZE", "-5"),
        ("JWT_EXPIRES_MINUTES", "soon"),
        ("JWT_EXPIRES_MINUTES", "-1"),
        ("HEARTBEAT_INTERVAL", "-1"),
        ("MAX_MESSAGE_BYTES", "big"),
        ("MAX_MESSAGE_BYTES", "-1"),
        ("WRITE_TIMEOUT_SECONDS", "never"),
        ("SHUTDOWN_GRACE_SECONDS", "-3"),
    ],
)
def test_invalid_numbers_are_config_errors_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        create_app(config(**{name: value}))


def test_unknown_log_level_is_a_config_error():
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        create_app(config(LOG_LEVEL="loud"))


@pytest.mark.parametrize(
    ("level", "number"),
    [("debug", 10), ("info", 20), ("warn", 30), ("warning", 30), ("error", 40)],
)
def test_documented_log_levels_set_the_gateway_loggers_level(level, number):
    app = create_app(config(LOG_LEVEL=level))
    assert logging.getLogger("gateway").level == number
    # A request line is logged at info: it shows exactly when the level lets info through.
    handler = _Collect()
    logging.getLogger("gateway").addHandler(handler)
    try:
        assert app.test_client().get("/health").status_code == 200
    finally:
        logging.getLogger("gateway").removeHandler(handler)
    assert any("path=/health" in line for line in handler.lines) == (number <= 20)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_ring_buffer_size_is_used(make_app, auth_headers):
    # A valid RING_BUFFER_SIZE is taken as given: "3" keeps three events for replay.
    app = make_app(RING_BUFFER_SIZE="3")
    client = app.test_client()
    client.post("/topics", json={"name": "r"}, headers=auth_headers(client=client))

    class Sink:
        def deliver(self, event):
            pass

        def topic_deleted(self, topic):
            pass

    with app.app_context():
        broker = get_broker()
        for n in range(5):
            broker.publish("r", f"id{n}", orjson.dumps({"n": n}))
        replay = broker.subscribe("r", Sink(), last_n=10).replay
    assert [orjson.loads(e.payload)["n"] for e in replay] == [2, 3, 4]


def test_each_app_has_its_own_users_and_topics(make_app):
    first, second = make_app().test_client(), make_app().test_client()
    body = json.dumps({"username": "same", "password": "a good password"})
    token = first.post("/users/register", data=body).get_json()["token"]
    first.post("/topics", json={"name": "only-here"}, headers={"Authorization": f"Bearer {token}"})
    assert second.post("/users/register", data=body).status_code == 201
    assert second.get("/stats").get_json() == {"topics": {}}
