"""The gunicorn worker's JSON error answers (the internals it uses: tests/test_libraries.py)."""

from __future__ import annotations

import json
import socket

from gateway.worker import write_json_error


def test_the_error_answer_is_the_gateway_json_shape():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_json_error(ours, 400, "Bad Request", "Invalid HTTP Version 'HTTP/9.9'")
        ours.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := theirs.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "Bad Request: Invalid HTTP Version 'HTTP/9.9'"}
