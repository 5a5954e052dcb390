"""LOG_FORMAT=json: every line gunicorn or the dev server writes is one JSON object, and none
holds a token or a password (docs/operations.md "JSON lines")."""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest
from harness import TS_RE, Server, create_topic, http, wait_until, ws_connect
from test_live_logs import exercise_with_secrets

# A path a client chose to forge lines and fields: newlines, quotes, a line separator, an
# escape sequence, a JSON object of its own, key=value words, and a token in the query.
HOSTILE_PATH = (
    "/nope%0a%7B%22level%22:%22CRITICAL%22%7D%0d%0aINFO%20forged%E2%80%A8ls%1b%5B31m%22q%22"
    "%20status=200%20level=CRITICAL"
)

# What Flask's CLI prints on the dev server before any logging: command output, not log lines.
FLASK_BANNER = (" * Serving Flask app 'wsgi'", " * Debug mode: off")


def workload(srv: Server) -> list[str]:
    """What test_live_logs.py does with secrets (accounts, a forged token, a WebSocket
    publish), then a bad frame, a bad body, a hostile path and a broken request line; return
    every secret used."""
    secrets = exercise_with_secrets(srv)
    token = secrets[2]  # the registration's token
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as client:
        client.subscribe(topic)
        reply = client.call({"type": "bogus", "request_id": 'a\n{"level":"CRITICAL"}\u2028b'})
        assert reply["type"] == "error", reply
    status, _ = http("POST", srv.url + "/topics", raw=b"{not json", token=token)
    assert status == 400
    assert raw_request(srv, f"GET {HOSTILE_PATH}?token={token} HTTP/1.1").startswith(
        b"HTTP/1.1 404"
    )
    # The dev server answers this one without a status line: its page names the code.
    assert b"400" in raw_request(srv, "NOT A REQUEST \x01\x02")
    return secrets


def raw_request(srv: Server, line: str) -> bytes:
    """Send one request line as it is; return the whole answer."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(
            f"{line}\r\nHost: 127.0.0.1:{srv.port}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def json_lines(text: str, allowed_text: tuple[str, ...] = ()) -> list[dict]:
    """Parse every line of a log as one JSON object (but the exact `allowed_text` lines)."""
    assert text.endswith("\n"), text[-200:]
    lines = text[:-1].split("\n")
    # No character that some reader takes for the end of a line (U+2028, NEL...) is left raw.
    assert text.splitlines() == lines, [line for line in text.splitlines() if line not in lines]
    entries = []
    for number, line in enumerate(lines, 1):
        if line in allowed_text:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        assert TS_RE.match(entry["ts"]) and len(entry["ts"]) == 24, line
        assert isinstance(entry["level"], str) and isinstance(entry["logger"], str), line
        assert isinstance(entry["msg"], str) and isinstance(entry["pid"], int), line
        entries.append(entry)
    return entries


def assert_no_secret(text: str, entries: list[dict], secrets: list[str]) -> None:
    decoded = json.dumps(entries, ensure_ascii=False)
    leaked = [s for s in secrets if s in text or s in decoded]
    assert not leaked, [line for line in text.splitlines() if any(s in line for s in leaked)][:5]


def test_every_gunicorn_line_is_json_and_holds_no_secret(server_factory):
    srv = server_factory(
        env={"LOG_FORMAT": "json", "LOG_LEVEL": "debug"}, args=("--access-logfile", "-")
    )
    secrets = workload(srv)
    assert srv.stop(timeout=20) == 0, srv.log_tail()
    text = srv.log_text()
    entries = json_lines(text)
    assert_no_secret(text, entries, secrets)

    def where(logger: str, start: str) -> list[dict]:
        return [e for e in entries if e["logger"] == logger and e["msg"].startswith(start)]

    # gunicorn's error log, start to stop.
    for start in ("Starting gunicorn", "Listening at", "Booting worker", "Handling signal: term"):
        assert where("gunicorn.error", start), f"no gunicorn.error line {start!r}\n{srv.log_tail()}"
    assert where("gunicorn.error", "Shutting down: Master")
    # Its access log, one line per request (our format: no query string).
    accessed = where("gunicorn.access", "127.0.0.1 ")
    assert any('"POST /users/login HTTP/1.1" 401' in e["msg"] for e in accessed), accessed
    # Our lines, with their fields.
    (registered,) = [e for e in where("gateway.http", "http ") if e["path"] == "/users/register"]
    assert registered["event"] == "http" and registered["status"] == 201, registered
    assert registered["method"] == "POST" and isinstance(registered["ms"], float), registered
    assert [e for e in where("gateway.http", "http ") if e["status"] == 401]  # the bad login
    assert where("gateway.http", "http ") and where("gateway.ws", "ws_connect conn=")
    (rejected,) = where("gateway.ws", "ws_rejected conn=")
    assert rejected["code"] == "BAD_REQUEST" and rejected["request_id"].startswith("a\\x0a{")
    assert where("gateway.ws", "ws_rejected status=401")
    assert where("gateway.ws", "ws_disconnect") and where("gateway.ws", "shutdown_done")
    # The hostile path: in its field, whole and escaped; it neither forged a line nor a field.
    (hostile,) = [e for e in where("gateway.http", "http ") if e["path"].startswith("/nope")]
    assert hostile["status"] == 404 and hostile["level"] == "INFO", hostile
    assert hostile["path"].startswith(
        '/nope\\x0a{"level":"CRITICAL"}\\x0d\\x0aINFO forged\\u2028'
    ), hostile
    assert hostile["path"].endswith(" status=200 level=CRITICAL"), hostile
    assert {e["level"] for e in entries} <= {"DEBUG", "INFO", "WARNING", "ERROR"}, entries
    assert not [e for e in entries if e["logger"] == "forged" or e["msg"].startswith("INFO forged")]
    assert any("/nope\\x0a{" in e["msg"] for e in accessed), accessed  # escaped there too


def test_every_dev_server_line_is_json_but_flasks_banner(server_factory):
    srv = server_factory(env={"LOG_FORMAT": "json"}, kind="flask")
    secrets = workload(srv)
    # A fresh server: its request lines are written after each answer.
    wait_until(lambda: "NOT A REQUEST" in srv.log_text(), 10, what="the last request's line")
    assert srv.stop(timeout=20, sig=signal.SIGINT) is not None, srv.log_tail()
    text = srv.log_text()
    for banner in FLASK_BANNER:
        assert text.count(banner + "\n") == 1, text[:500]
    entries = json_lines(text, allowed_text=FLASK_BANNER)
    assert_no_secret(text, entries, secrets)
    werkzeug = [e for e in entries if e["logger"] == "werkzeug"]
    assert any("Running on http://127.0.0.1:" in e["msg"] for e in werkzeug), werkzeug[:3]
    requests = [e for e in werkzeug if re.match(r'127\.0\.0\.1 - - \[[^]]+\] "', e["msg"])]
    assert any('"POST /users/register HTTP/1.1" 201' in e["msg"] for e in requests), requests
    assert any('"GET /ws?token=[redacted] HTTP/1.1" 200' in e["msg"] for e in requests), requests
    assert not [e for e in requests if "\x1b" in e["msg"] or "[0m" in e["msg"]]  # no colours
    assert [e for e in entries if e["logger"] == "gateway.http" and e.get("status") == 201]
    assert [e for e in entries if e["logger"] == "gateway.ws" and e.get("event") == "ws_connect"]


@pytest.mark.parametrize(
    ("env", "json_line"),
    [
        ({"LOG_FORMAT": "json", "JWT_SECRET_KEY": None}, True),
        ({"LOG_FORMAT": "json", "WEB_CONCURRENCY": "2"}, True),
        ({"LOG_FORMAT": "xml"}, False),
    ],
    ids=["json-missing-secret", "json-several-workers", "bad-log-format"],
)
def test_a_configuration_error_is_written_in_log_format(tmp_path, env, json_line):
    srv = Server(tmp_path, env=env).launch()
    try:
        assert srv.wait_exit(20) == 2, srv.log_tail()
        text = srv.log_text()
        if not json_line:
            assert text == "configuration error: LOG_FORMAT must be one of text, json; got 'xml'\n"
            return
        entries = json_lines(text)
        (fatal,) = [e for e in entries if e["logger"] == "gateway.config"]
        assert fatal["level"] == "CRITICAL" and fatal["msg"].startswith("configuration error: ")
    finally:
        srv.close()
