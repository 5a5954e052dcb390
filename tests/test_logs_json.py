"""LOG_FORMAT=json: one JSON object per line, whatever a client sends (docs/operations.md "Logging")."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re

import pytest
from gunicorn.config import Config

from gateway import logs

LAST_RESORT = logging.lastResort
GUNICORN_LOGGERS = ("gunicorn.error", "gunicorn.access")
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SECRET = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2VjcmV0LXNpZ25hdHVyZQ"
# Everything a client may slip into a path, a request id or a username to break a line.
HOSTILE = (
    'a"b\\c\n{"level": "CRITICAL", "logger": "forged"}\r\nINFO forged'
    "\u2028ls\u2029ps\x85nel\x0bvt\x1b[31mred\x1b[0m\x00 status=500 level=CRITICAL"
)


def one_object(text: str) -> dict:
    """Assert `text` is exactly one line holding one JSON object; return it."""
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert len(text.splitlines()) == 1, f"a character that ends a line: {text!r}"
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", text[:-1]), text
    entry = json.loads(text)
    assert isinstance(entry, dict), entry
    assert TS.match(entry["ts"]), entry
    assert entry["pid"] == os.getpid(), entry
    return entry


def lines_of(text: str) -> list[dict]:
    return [one_object(line + "\n") for line in text.splitlines()]


@pytest.fixture
def json_logs():
    """LOG_FORMAT=json for one test, the gateway handler writing to a buffer; text after."""
    gateway = logging.getLogger("gateway")
    level = gateway.level
    logs.configure(logging.DEBUG, "json")
    handler = next(h for h in gateway.handlers if getattr(h, "_gateway", False))
    buffer = io.StringIO()
    stream = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(stream)
        logs.set_format("text")
        gateway.setLevel(level)


@pytest.fixture
def library_level():
    """Let werkzeug's logger pass INFO, as werkzeug does on its first line."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    yield
    werkzeug.setLevel(level)


def test_a_line_has_the_base_fields_and_our_key_value_fields(json_logs):
    logging.getLogger("gateway.http").info(
        "http id=%s method=%s path=%s status=%d ms=%.1f%s", "r1", "POST", "/users", 201, 3.14159, ""
    )
    entry = one_object(json_logs.getvalue())
    assert entry["level"] == "INFO" and entry["logger"] == "gateway.http"
    assert entry["msg"] == "http id=r1 method=POST path=/users status=201 ms=3.1"
    assert entry["event"] == "http"
    assert (entry["id"], entry["method"], entry["path"]) == ("r1", "POST", "/users")
    assert entry["status"] == 201 and entry["ms"] == 3.1
    assert "exc" not in entry


def test_literal_fields_and_fields_past_an_unkeyed_placeholder():
    fields = logs.key_value_fields(
        "%s_rejected status=503 reason=capacity connections=%d grace=%ss 100%% %s", ("ws", 7, 10)
    )
    assert fields == {"status": 503, "reason": "capacity", "connections": 7, "grace": 10}
    assert logs.key_value_fields("loop_died loop=%s", None) == {}
    assert logs.key_value_fields(ValueError("not a format"), ()) == {}


def test_a_traceback_is_one_line_with_an_exc_field(json_logs):
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("gateway.ws").exception("ws_error conn=%s", "c1")
    entry = one_object(json_logs.getvalue())
    assert entry["level"] == "ERROR" and entry["msg"] == "ws_error conn=c1"
    assert entry["event"] == "ws_error" and entry["conn"] == "c1"
    exc = entry["exc"].splitlines()
    assert exc[0] == "Traceback (most recent call last):"
    assert exc[-2:] == ["ValueError: boom", "second line"]


def test_flasks_app_logger_writes_json_too(json_logs):
    logging.getLogger("gateway").error(
        "Exception on %s [GET]", "/a\nb", exc_info=(KeyError, KeyError("k"), None)
    )
    entry = one_object(json_logs.getvalue())
    assert entry["logger"] == "gateway" and entry["msg"] == r"Exception on /a\x0ab [GET]"
    assert entry["exc"] == "KeyError: 'k'" and "event" not in entry


def test_hostile_client_text_stays_on_one_line_and_adds_no_field(json_logs):
    logging.getLogger("gateway.http").info("http path=%s id=%s status=%d", HOSTILE, HOSTILE, 404)
    entry = one_object(json_logs.getvalue())
    assert entry["level"] == "INFO" and entry["logger"] == "gateway.http"
    assert entry["status"] == 404 and "CRITICAL" not in entry.values()
    assert set(entry) == {"ts", "level", "logger", "msg", "pid", "event", "path", "id", "status"}
    # The text as SafeMessage escapes it, in the message and in the fields alike.
    assert entry["path"] == entry["id"] == logs.escape_controls(HOSTILE)
    assert entry["msg"] == f"http path={entry['path']} id={entry['id']} status=404"


def test_tokens_never_reach_a_library_line(json_logs, capsys, library_level, monkeypatch):
    # werkzeug's request line (its colours are dropped), and the warning of a library whose
    # logger has no handler anywhere (pytest's own sits on the root logger: not propagating
    # stands for that), which logging writes through lastResort: tokens are redacted.
    library = logging.getLogger("some.library")
    monkeypatch.setattr(library, "propagate", False)
    logging.getLogger("werkzeug").info(
        '%s - - [date] "%s" %s -',
        "127.0.0.1",
        f"\x1b[33mGET /ws?token={SECRET}&{HOSTILE}\x1b[0m",
        101,
    )
    library.warning("retrying %s with Bearer %s", f"https://h/x?access_token={SECRET}", SECRET)
    library.info("below lastResort's level: not written")
    captured = capsys.readouterr()
    werkzeug, warning = lines_of(captured.err)
    assert werkzeug["logger"] == "werkzeug" and werkzeug["level"] == "INFO"
    assert werkzeug["msg"].startswith('127.0.0.1 - - [date] "GET /ws?token=[redacted]&a')
    assert "\x1b" not in werkzeug["msg"] and "[33m" not in werkzeug["msg"]
    assert warning["logger"] == "some.library" and warning["level"] == "WARNING"
    assert warning["msg"] == "retrying https://h/x?access_token=[redacted] with Bearer [redacted]"
    assert SECRET not in captured.err + captured.out + json_logs.getvalue()


@pytest.fixture
def gunicorn_logger(json_logs, tmp_path):
    """gunicorn's logger as gunicorn.conf.py installs it, with an error log and an access log."""
    before = {name: logging.getLogger(name).handlers[:] for name in GUNICORN_LOGGERS}
    cfg = Config()
    cfg.set("errorlog", str(tmp_path / "error.log"))
    cfg.set("accesslog", str(tmp_path / "access.log"))
    yield logs.json_gunicorn_logger()(cfg), cfg, tmp_path
    for name, handlers in before.items():
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
            handler.close()


def access(glog, uri: str) -> None:
    """Have gunicorn log one request for `uri` in its access log."""
    path, _, query = uri.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": uri,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    response = type("Response", (), {"status": "404 NOT FOUND", "headers": [], "sent": 12})()
    request = type("Request", (), {"headers": [("AUTHORIZATION", f"Bearer {SECRET}")]})()
    glog.access(response, request, environ, datetime.timedelta(milliseconds=5))


def test_gunicorn_error_and_access_lines_are_json(gunicorn_logger):
    glog, cfg, folder = gunicorn_logger
    for round_ in ("start", "reload"):
        glog.info("Booting worker with pid: %s", 42)
        try:
            raise OSError("boom")
        except OSError:
            glog.exception("Error handling request %s", f"/ws?token={SECRET}\n{HOSTILE}")
        # gunicorn's default access format logs the whole request line, query string included.
        access(glog, f"/ws?token={SECRET}&x={HOSTILE}")
        errors, accesses = (folder / "error.log").read_text(), (folder / "access.log").read_text()
        booting, error = lines_of(errors)
        (line,) = lines_of(accesses)
        assert booting["logger"] == "gunicorn.error" and booting["msg"].endswith("pid: 42")
        assert error["level"] == "ERROR" and error["exc"].endswith("OSError: boom")
        assert error["msg"].startswith("Error handling request /ws?token=[redacted]\\x0aa")
        assert line["logger"] == "gunicorn.access" and line["level"] == "INFO"
        assert '"GET /ws?token=[redacted]&x=a' in line["msg"] and " 404 12 " in line["msg"]
        assert SECRET not in errors + accesses, round_
        for log in folder.iterdir():
            log.write_text("")
        glog.setup(cfg)  # a reload (SIGHUP) builds the handlers again


def test_a_startup_error_is_one_json_line(json_logs, capsys):
    logs.report_fatal("configuration error: JWT_SECRET_KEY is required\nand more")
    entry = one_object(capsys.readouterr().err)
    assert entry["level"] == "CRITICAL" and entry["logger"] == "gateway.config"
    assert entry["msg"] == "configuration error: JWT_SECRET_KEY is required\nand more"


def test_text_is_the_default_and_comes_back(capsys):
    logs.report_fatal("configuration error: LOG_FORMAT must be one of text, json; got 'xml'")
    assert capsys.readouterr().err == (
        "configuration error: LOG_FORMAT must be one of text, json; got 'xml'\n"
    )
    assert logging.lastResort is LAST_RESORT
    with pytest.raises(ValueError):
        logs.set_format("xml")
