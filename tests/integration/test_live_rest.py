"""REST errors, token checks, CORS and the WebSocket Origin/auth gate over real sockets
(docs/rest-api.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from harness import PASSWORD, http, http_full, register, unique, ws_connect
from websockets.exceptions import InvalidStatus


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict, key: str | None, alg: str = "HS256") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    if key is None:
        return f"{head}.{body}."
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def assert_json_error(resp, status: int | tuple[int, ...]) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status in statuses, (resp.status, resp.body[:300])
    assert isinstance(resp.json, dict) and isinstance(resp.json.get("error"), str), resp.body[:300]
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers


def test_unknown_route_is_json_404(gw):
    assert_json_error(http_full("GET", f"{gw.url}/{unique('nowhere')}"), 404)


@pytest.mark.parametrize(
    "method,path", [("DELETE", "/health"), ("PUT", "/topics"), ("GET", "/users/login")]
)
def test_wrong_method_is_json_405(gw, method, path):
    assert_json_error(http_full(method, gw.url + path), 405)


def test_health_and_stats_shapes(gw):
    status, body = http("GET", gw.url + "/health")
    assert status == 200 and all(
        isinstance(body[k], int) for k in ("uptime_sec", "topics", "subscribers")
    )
    status, body = http("GET", gw.url + "/stats")
    assert status == 200 and isinstance(body["topics"], dict), body


def test_topic_validation_and_conflicts(gw, token):
    name = unique("ok.name:v1")
    raw = json.dumps({"name": name}).encode()
    # JSON is parsed whatever the Content-Type (curl users forget the header).
    resp = http_full(
        "POST", gw.url + "/topics", raw=raw, token=token, headers={"Content-Type": "text/plain"}
    )
    assert resp.status == 201, (resp.status, resp.body)
    assert_json_error(http_full("POST", gw.url + "/topics", {"name": name}, token=token), 409)
    for bad in (
        {"name": ""},
        {"name": "has space"},
        {"name": "x" * 129},
        {"name": "é"},
        {"name": 5},
        {},
        ["name"],
    ):
        assert_json_error(http_full("POST", gw.url + "/topics", bad, token=token), 400)
    assert_json_error(http_full("POST", gw.url + "/topics", raw=b"{not json", token=token), 400)
    longest = (unique("L") * 12)[:128]
    assert http("POST", gw.url + "/topics", {"name": longest}, token=token)[0] == 201
    assert_json_error(http_full("DELETE", f"{gw.url}/topics/{unique('missing')}", token=token), 404)


def test_register_and_login_rules(gw):
    name = unique("bob")
    assert (
        http("POST", gw.url + "/users/register", {"username": name, "password": PASSWORD})[0] == 201
    )
    assert_json_error(
        http_full("POST", gw.url + "/users/register", {"username": name, "password": PASSWORD}), 409
    )
    for bad in (
        {"username": "", "password": PASSWORD},
        {"username": "no spaces", "password": PASSWORD},
        {"username": unique("c"), "password": "short"},
        {"username": unique("c"), "password": PASSWORD, "email": "no-at-sign"},
        {"username": unique("c"), "password": PASSWORD, "email": "a@b@c"},
        {"username": unique("c")},
    ):
        assert_json_error(http_full("POST", gw.url + "/users/register", bad), 400)
    wrong = http_full(
        "POST", gw.url + "/users/login", {"username": name, "password": "wrong-password"}
    )
    unknown = http_full(
        "POST", gw.url + "/users/login", {"username": unique("ghost"), "password": PASSWORD}
    )
    assert_json_error(wrong, 401)
    assert_json_error(unknown, 401)
    assert wrong.json == unknown.json, "wrong password and unknown user must look the same"


def test_tokens_are_checked(gw, token):
    key = gw.env["JWT_SECRET_KEY"]
    now = int(time.time())
    bad_tokens = {
        "garbage": "not-a-jwt",
        "alg-none": make_jwt({"sub": "1", "exp": now + 3600}, None, alg="none"),
        "wrong-key": make_jwt({"sub": "1", "exp": now + 3600}, "another-key"),
        "expired": make_jwt({"sub": "1", "exp": now - 60}, key),
    }
    for label, bad in bad_tokens.items():
        resp = http_full("GET", gw.url + "/topics", token=bad)
        assert resp.status == 401, (label, resp.status, resp.body)
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(gw, bad)
        assert refused.value.response.status_code == 401, label
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(gw, header_token=bad)
        assert refused.value.response.status_code == 401, label
    assert_json_error(http_full("GET", gw.url + "/topics"), 401)
    # Stateless auth: a well-signed token of a user that does not exist passes topic routes.
    ghost = make_jwt({"sub": "999999999", "exp": now + 3600}, key)
    assert http("GET", gw.url + "/topics", token=ghost)[0] == 200
    assert_json_error(http_full("GET", gw.url + "/users/profile", token=ghost), 404)


def test_websocket_without_token_is_401(gw):
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(gw)
    assert refused.value.response.status_code == 401


def test_cors_preflight_on_default_settings(gw):
    resp = http_full(
        "OPTIONS",
        gw.url + "/topics",
        headers={
            "Origin": "https://anything.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert 200 <= resp.status < 300, (resp.status, resp.body)
    assert resp.headers.get("access-control-allow-origin") in ("*", "https://anything.example"), (
        resp.headers
    )


def test_cors_and_websocket_origin_follow_the_allow_list(server_factory):
    app_origin = "https://app.example"
    srv = server_factory(env={"ALLOWED_CORS_ORIGIN": f"{app_origin},https://admin.example"})
    token = register(srv)

    resp = http_full(
        "OPTIONS",
        srv.url + "/topics",
        headers={
            "Origin": app_origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert 200 <= resp.status < 300, (resp.status, resp.body)
    assert resp.headers.get("access-control-allow-origin") == app_origin, resp.headers
    resp = http_full("GET", srv.url + "/topics", token=token, headers={"Origin": app_origin})
    assert resp.status == 200 and resp.headers.get("access-control-allow-origin") == app_origin

    for origin in (app_origin, "https://admin.example", None):
        with ws_connect(srv, token, origin=origin) as ws:
            ws.ping()
    for origin in ("https://evil.example", "http://app.example", "null"):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(srv, token, origin=origin)
        assert refused.value.response.status_code == 403, origin
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(srv, header_token=token, origin="https://evil.example")
    assert refused.value.response.status_code == 403
