"""The HTTP edge against hostile or careless clients: preflights on any path, the SSE Origin
check, log lines that cannot be forged, and tokens that must expire (docs/rest-api.md,
Logging)."""

from __future__ import annotations

import io
import logging
import sys
import time

import jwt
import pytest

from gateway.accounts.tokens import AuthError, verify
from gateway.logs import SafeMessage, escape_controls

PREFLIGHT = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
GOOD_ORIGIN = "https://good.example"


def assert_error(response, status: int) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body


# --- CORS preflight on any path -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/topics/x/whatever", "/users", "/ws", "/"])
def test_a_preflight_gets_2xx_and_cors_headers_on_any_path(client, path):
    # A browser reports a failed preflight as "Failed to fetch": it must pass, so that the
    # real request's JSON error (404, 401...) is what the page sees.
    response = client.options(path, headers=PREFLIGHT)
    assert 200 <= response.status_code < 300, (response.status_code, response.get_data())
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://a.example")
    methods = response.headers.get("Access-Control-Allow-Methods", "")
    assert "POST" in {m.strip() for m in methods.split(",")}, dict(response.headers)
    # The real request then gets its JSON error.
    real = client.post(path, headers={"Origin": "https://a.example"})
    assert 400 <= real.status_code < 500
    assert isinstance(real.get_json().get("error"), str)
    assert real.headers.get("Access-Control-Allow-Origin") in ("*", "https://a.example")


def test_a_preflight_from_a_foreign_origin_gets_no_cors_headers(make_app):
    client = make_app(ALLOWED_CORS_ORIGIN=GOOD_ORIGIN).test_client()
    response = client.options("/nope", headers=PREFLIGHT | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    response = client.options("/nope", headers=PREFLIGHT | {"Origin": GOOD_ORIGIN})
    assert response.status_code < 300
    assert response.headers.get("Access-Control-Allow-Origin") == GOOD_ORIGIN


def test_an_options_request_that_is_no_preflight_is_routed_as_before(client):
    assert_error(client.options("/nope"), 404)


# --- the SSE stream checks Origin like /ws --------------------------------------------------


def test_sse_refuses_a_foreign_origin_before_anything_else(make_app):
    client = make_app(ALLOWED_CORS_ORIGIN=GOOD_ORIGIN).test_client()
    for path in ("/topics/t1/events", "/topics/t1/events?token=garbage", "/topics/bad name/events"):
        response = client.get(path, headers={"Origin": "https://evil.example"})
        assert_error(response, 403)
        assert response.get_json() == {"error": "origin not allowed"}


def test_sse_lets_a_listed_origin_or_none_through(make_app, make_user):
    client = make_app(ALLOWED_CORS_ORIGIN=GOOD_ORIGIN).test_client()
    token = make_user(client=client)
    for headers in ({"Origin": GOOD_ORIGIN}, {}):
        # The next check answers: no token (401), then an unknown topic (404).
        assert_error(client.get("/topics/t1/events", headers=headers), 401)
        missing = client.get(f"/topics/t1/events?token={token}", headers=headers)
        assert_error(missing, 404)


# --- log lines cannot be forged -------------------------------------------------------------


def test_escape_controls_keeps_a_text_on_one_line():
    text = "a\nb\rc\x00\x1b[2J\x7f\x85\u2028\u2029\t" + "é✓"
    assert escape_controls(text) == r"a\x0ab\x0dc\x00\x1b[2J\x7f\x85\u2028\u2029\x09" + "é✓"


def format_through(log_filter: logging.Filter, msg: str, *args, exc_info=None) -> str:
    record = logging.LogRecord("gateway.test", logging.INFO, __file__, 1, msg, args, exc_info)
    assert log_filter.filter(record)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return handler.format(record)


def test_the_filter_escapes_client_text_but_keeps_tracebacks_multiline():
    line = format_through(SafeMessage(), "http path=%s id=%s", "/nope\nINFO forged", "x\u2028y")
    assert line == r"INFO http path=/nope\x0aINFO forged id=x\u2028y"
    try:
        raise ValueError("boom")
    except ValueError:
        text = format_through(SafeMessage(), "failed path=%s", "/a\nb", exc_info=sys.exc_info())
    first, *rest = text.splitlines()
    assert first == r"INFO failed path=/a\x0ab"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_the_filter_keeps_werkzeug_colours_only_where_asked():
    coloured = "\x1b[33mGET /nope HTTP/1.1\x1b[0m"
    assert format_through(SafeMessage(keep_colours=True), '"%s" 404', coloured + "\n") == (
        f'INFO "{coloured}\\x0a" 404'
    )
    assert "\x1b" not in format_through(SafeMessage(), '"%s" 404', coloured)


def test_every_log_destination_of_the_app_escapes(app):
    gateway_handler = next(
        h for h in logging.getLogger("gateway").handlers if getattr(h, "_gateway", False)
    )
    for where in (
        gateway_handler,
        logging.getLogger("werkzeug"),
        logging.getLogger("gunicorn.error"),
        logging.getLogger("gunicorn.access"),
    ):
        record = logging.LogRecord(
            "gateway.http.bodies", logging.INFO, __file__, 1, "path=%s", ("/a\nINFO forged",), None
        )
        assert where.filter(record), where
        assert record.getMessage() == r"path=/a\x0aINFO forged", where


# --- tokens must carry exp and sub ----------------------------------------------------------


def mint(secret: str, **claims) -> str:
    return jwt.encode({"type": "access", **claims}, secret, "HS256")


@pytest.fixture
def tokens(jwt_secret) -> dict[str, str]:
    later = int(time.time()) + 600
    return {
        "good": mint(jwt_secret, sub="u1", exp=later),
        "no_exp": mint(jwt_secret, sub="u1"),
        "no_sub": mint(jwt_secret, exp=later),
    }


def test_rest_refuses_a_token_without_exp_or_sub(client, tokens):
    def get(token: str):
        return client.get("/topics", headers={"Authorization": f"Bearer {token}"})

    assert get(tokens["good"]).status_code == 200  # the minting itself is sound
    assert_error(get(tokens["no_exp"]), 401)
    assert_error(get(tokens["no_sub"]), 401)


def test_websocket_and_sse_checks_refuse_a_token_without_exp_or_sub(app, tokens):
    with app.app_context():
        assert verify(tokens["good"]) == "u1"
        for name in ("no_exp", "no_sub"):
            with pytest.raises(AuthError):
                verify(tokens[name])
