"""Malformed WebSocket handshakes get a 400 JSON error, never a 5xx, and never hurt the server
(docs/protocol.md)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.parse

import pytest
from harness import http, read_body, read_head, register

GOOD_KEY = base64.b64encode(os.urandom(16)).decode()
SHORT_KEY = base64.b64encode(os.urandom(8)).decode()


def upgrade_headers(port: int, **changes: str | None) -> dict[str, str]:
    """A valid upgrade request's headers, with some changed or (None) left out."""
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": GOOD_KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


def request_bytes(
    method: str, target: str, headers: dict[str, str], version: str = "HTTP/1.1"
) -> bytes:
    lines = [f"{method} {target} {version}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the response's status, headers and body (by Content-Length).

    A response to HEAD has no body whatever its Content-Length.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        status, headers, body = read_head(sock, deadline)
        length = 0 if data.startswith(b"HEAD ") else int(headers.get("content-length", "0"))
        body = read_body(sock, body, length, deadline)
    return status, headers, body


def ws_target(token: str) -> str:
    return "/ws?" + urllib.parse.urlencode({"token": token})


def assert_400_json(status: int, headers: dict[str, str], body: bytes) -> str:
    assert status == 400, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and isinstance(parsed["error"], str), parsed
    return parsed["error"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Sec-WebSocket-Version": None}, "version"),
        ({"Sec-WebSocket-Version": "8"}, "version"),
        ({"Sec-WebSocket-Key": None}, "key"),
        ({"Sec-WebSocket-Key": "not base64 at all!"}, "key"),
        ({"Sec-WebSocket-Key": SHORT_KEY}, "key"),
        ({"Sec-WebSocket-Key": "eA=="}, "key"),  # valid base64 of a single byte
        ({"Upgrade": None}, "upgrade"),
        ({"Upgrade": "h2c"}, "upgrade"),
        ({"Connection": None}, "connection"),
        ({"Connection": "keep-alive, close"}, "connection"),
    ],
    ids=[
        "no-version",
        "version-8",
        "no-key",
        "key-not-base64",
        "key-8-bytes",
        "key-1-byte",
        "no-upgrade",
        "upgrade-h2c",
        "no-connection",
        "connection-keep-alive",
    ],
)
def test_a_malformed_upgrade_is_a_400_json_error(gw, token, changes, reason):
    data = request_bytes("GET", ws_target(token), upgrade_headers(gw.port, **changes))
    status, headers, body = exchange(gw.port, data)
    message = assert_400_json(status, headers, body)
    if reason == "version":
        # RFC 6455 §4.4: the server names the version it speaks.
        assert headers.get("sec-websocket-version") == "13", headers
        assert "Sec-WebSocket-Version" in message
    if reason == "key":
        assert "Sec-WebSocket-Key" in message
    assert f"ws_rejected status=400 reason={reason}" in gw.log_text()


def test_a_plain_get_of_ws_is_a_400_json_error(gw, token):
    data = request_bytes("GET", ws_target(token), {"Host": f"127.0.0.1:{gw.port}"})
    message = assert_400_json(*exchange(gw.port, data))
    assert "WebSocket" in message, message


def test_head_with_upgrade_headers_is_refused_not_upgraded(gw, token):
    # The library writes its handshake as a GET whatever the method: this one would get a 101.
    data = request_bytes("HEAD", ws_target(token), upgrade_headers(gw.port))
    status, headers, _ = exchange(gw.port, data)
    assert status == 400, (status, headers)
    assert "ws_rejected status=400 reason=method" in gw.log_text()


def test_post_to_ws_is_a_json_405_naming_get(gw, token):
    # werkzeug routes by method before any check of ours runs: 405 is the precise answer.
    headers = upgrade_headers(gw.port) | {"Content-Length": "0"}
    status, response_headers, body = exchange(
        gw.port, request_bytes("POST", ws_target(token), headers)
    )
    assert status == 405, (status, body)
    assert "GET" in response_headers.get("allow", ""), response_headers
    assert isinstance(json.loads(body).get("error"), str)


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_a_handshake_the_library_refuses_is_a_400_not_a_500(gw, token, version):
    # Without Host, our checks pass but the library's handshake fails (h11 requires Host).
    headers = upgrade_headers(gw.port, Host=None)
    status, response_headers, body = exchange(
        gw.port, request_bytes("GET", ws_target(token), headers, version)
    )
    message = assert_400_json(status, response_headers, body)
    assert "handshake" in message, message
    assert "ws_rejected status=400 reason=handshake" in gw.log_text()


@pytest.mark.parametrize(
    "junk",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n",
        b"\x00\xff" * 40 + b"\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nthis line is no header\r\n\r\n",
        b"GET /ws HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\r\n\r\n",
    ],
    ids=["tls-hello", "binary", "bad-header-line", "bad-version", "empty-lines"],
)
def test_junk_instead_of_a_request_gets_400_and_the_server_serves_on(gw, junk):
    workers_booted = gw.log_text().count("Booting worker")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(junk)
        buf = b""
        while True:  # gunicorn closes the connection after its error answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), buf[:200]
    head, _, body = buf.partition(b"\r\n\r\n")
    # gunicorn answers these itself, before Flask: in the gateway's JSON shape all the same.
    assert b"content-type: application/json" in head.lower(), head
    assert isinstance(json.loads(body)["error"], str), body
    assert http("GET", gw.url + "/health")[0] == 200
    assert gw.proc.poll() is None, gw.log_tail()
    assert gw.log_text().count("Booting worker") == workers_booted, gw.log_tail()


def assert_upgrades(port: int, token: str) -> None:
    """A valid upgrade request gets its 101."""
    data = request_bytes("GET", ws_target(token), upgrade_headers(port))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:200]


def test_a_valid_upgrade_still_gets_101(gw, token):
    assert_upgrades(gw.port, token)


def test_the_server_still_upgrades_after_a_burst_of_bad_handshakes(gw):
    token = register(gw)
    for key in ("x", "", SHORT_KEY):
        data = request_bytes(
            "GET", ws_target(token), upgrade_headers(gw.port, **{"Sec-WebSocket-Key": key})
        )
        assert_400_json(*exchange(gw.port, data))
    assert_upgrades(gw.port, token)


def test_the_dev_server_refuses_malformed_upgrades_alike(server_factory):
    srv = server_factory(kind="flask")
    token = register(srv)
    for changes in (
        {"Sec-WebSocket-Version": None},
        {"Sec-WebSocket-Key": SHORT_KEY},
        {"Host": None},
    ):
        data = request_bytes("GET", ws_target(token), upgrade_headers(srv.port, **changes))
        assert_400_json(*exchange(srv.port, data))
    assert_upgrades(srv.port, token)
