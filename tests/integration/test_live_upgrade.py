"""Frames a client sends right behind its upgrade request, before the 101, are served."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.parse

from harness import create_topic, register


def masked_text(payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    assert len(data) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )


def read_texts(sock: socket.socket, buf: bytes, count: int, timeout: float) -> list[dict]:
    """Parse server text frames (heartbeats aside) from `buf` and the socket until `count` arrived."""
    texts: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(texts) < count:
        while len(buf) >= 2 and len(texts) < count:
            length, start = buf[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buf[2:4], "big"), 4
            if len(buf) < start + length:
                break
            if buf[0] & 0x0F == 0x1:
                text = json.loads(buf[start : start + length])
                if not (text["type"] == "info" and text.get("msg") == "ping"):
                    texts.append(text)  # heartbeats may come at any time: not counted
            buf = buf[start + length :]
        if len(texts) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(texts)} of {count} frames arrived: {texts}"
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            assert chunk, f"server closed after {texts}"
            buf += chunk
    return texts


def test_frames_pipelined_with_the_upgrade_request_are_served_in_order(gw):
    token = register(gw)
    topic = create_topic(gw, token)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?{urllib.parse.urlencode({'token': token})} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    early = masked_text({"type": "ping", "request_id": "early-ping"}) + masked_text(
        {"type": "subscribe", "topic": topic, "request_id": "early-sub"}
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(request + early)  # one write: no waiting for the 101
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "server closed during the handshake"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        replies = read_texts(sock, buf, 2, timeout=5)
    assert [(r["type"], r.get("request_id")) for r in replies] == [
        ("pong", "early-ping"),
        ("ack", "early-sub"),
    ], replies


def test_an_upgrade_request_with_a_body_is_refused(gw):
    token = register(gw)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?{urllib.parse.urlencode({'token': token})} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Content-Length: 5\r\n\r\nhello"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf or not buf.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body) == {"error": "a WebSocket upgrade request has no body"}
    assert "ws_rejected status=400 reason=body" in gw.log_text()
