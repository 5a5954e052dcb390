"""Text a client chooses cannot forge a line in the server's log (docs/operations.md "Logging")."""

from __future__ import annotations

import socket

from harness import register, unique, wait_until, ws_connect


def test_a_newline_in_a_path_or_a_request_id_cannot_forge_a_log_line(server_factory):
    # With gunicorn's access log on too: both our request line and gunicorn's see the path.
    srv = server_factory(args=("--access-logfile", "-"))
    marker = unique("forged")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(
            f"GET /nope%0aINFO%20{marker}%0d%0aERROR%20{marker}-cr%E2%80%A8{marker}-ls HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{srv.port}\r\nConnection: close\r\n\r\n".encode()
        )
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 404"), response[:200]

    token = register(srv)
    with ws_connect(srv, token) as client:
        reply = client.call({"type": "bogus", "request_id": f"a\n{marker}-ws line"})
        assert reply["type"] == "error", reply

    def both_lines_written() -> str | None:
        # A fresh server: these are the lines of the two requests above.
        text = srv.log_text()
        return text if "status=404" in text and "ws_rejected conn=" in text else None

    log = wait_until(both_lines_written, timeout=10, what="the 404 and the ws_rejected lines")
    forged = [
        line
        for line in log.splitlines()
        if marker in line and not line.startswith(("20", "[20", "127.0.0.1"))
    ]
    assert not forged, forged
    assert f"path=/nope\\x0aINFO {marker}\\x0d\\x0aERROR {marker}-cr\\u2028{marker}-ls" in log
    assert f"request_id=a\\x0a{marker}-ws line" in log
    # gunicorn's access line carries the path too, escaped alike.
    assert log.count(f"/nope\\x0aINFO {marker}") == 2, srv.log_tail()
