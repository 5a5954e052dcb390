"""Logging: one line per event, as text or JSON (LOG_FORMAT), at LOG_LEVEL, and no secrets.

Tokens travel in `?token=` on WebSocket upgrades, so every request line that a server
library writes (werkzeug's dev server, gunicorn's access log) passes a filter that redacts
them; our own lines log the path without its query string and never a header or a body.

Log lines carry text that clients chose (paths, request ids, usernames, topics, origins).
The same filter escapes control characters in every message, ours and the libraries', so
that no such text can end a line and forge the next one (docs/operations.md "Logging").

With LOG_FORMAT=json every line is one JSON object instead: ours and Flask's, werkzeug's,
gunicorn's (through the logger class gunicorn.conf.py installs), and other libraries' warnings
(through `logging.lastResort`). The format is process-wide, as logging's configuration is:
the entry points (gunicorn.conf.py, wsgi.py) set it before the app, so that the first lines
and a configuration error are written in it too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

import orjson

from gateway.config import LOG_FORMATS

_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;])(?:token|access_token|jwt)=)[^&\s\"']*", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
# C0 (line feed, carriage return, escape...), DEL, C1 (NEL...) and the Unicode line and
# paragraph separators: each can end a line in some log viewer or drive a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same, but complete colour codes (SGR) are kept: werkzeug colours its request lines
# after escaping the request's own text, and a colour cannot start a line.
_CONTROL_BUT_COLOURS = re.compile("(\x1b\\[[0-9;]*m)|[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_COLOUR = re.compile("\x1b\\[[0-9;]*m")
# What JSON may leave raw in a string but a reader could take for the end of a line.
_RAW_BREAKS = re.compile("[\x7f-\x9f\u2028\u2029]")
# A %-placeholder of a logging format ("%s", "%d", "%.1f", "%%").
_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?[-#0 +]*\d*(?:\.(\d+))?[diouxXeEfFgGcrsa%]")
# A key=value word that our code wrote whole into a format ("status=503 reason=capacity").
_LITERAL_FIELD = re.compile(r"(?:^|(?<=\s))(\w+)=([^\s%]+)(?=\s|$)")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The attribute that carries a gateway.* line's key=value fields to the JSON formatter.
FIELDS = "gateway_fields"
# Fields of every JSON line: a key=value field of the same name does not replace them.
_BASE_KEYS = frozenset({"ts", "level", "logger", "msg", "pid", "event", "exc", "stack"})
_TEXT_LAST_RESORT = logging.lastResort
_format = "text"


def redact(text: str) -> str:
    """Replace token values in a log text by [redacted]."""
    return _BEARER.sub(r"\1[redacted]", _TOKEN_IN_QUERY.sub(r"\1[redacted]", text))


def escape_controls(text: str) -> str:
    """Write each control character of `text` as \\xNN or \\uNNNN, so it stays one line."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    if match.lastindex:  # the colour-code group of _CONTROL_BUT_COLOURS: kept
        return match.group()
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class SafeMessage(logging.Filter):
    """A logging filter that escapes control characters in a message and can redact tokens.

    Only the message is touched: a record's traceback (`exc_info`) is formatted after it,
    by the handler, and keeps its lines (in JSON, inside its `exc` string).
    """

    def __init__(
        self, redact_tokens: bool = True, keep_colours: bool = False, literal_ok: bool = False
    ) -> None:
        super().__init__()
        self._redact = redact if redact_tokens else str
        self._controls = _CONTROL_BUT_COLOURS if keep_colours else _CONTROL
        # werkzeug passes what a client sent as arguments; a message without arguments is
        # its own text (the multi-line start-up banner of the dev server), left as it is.
        self._literal_ok = literal_ok

    def filter(self, record: logging.LogRecord) -> bool:
        if self._literal_ok and not record.args:
            return True
        try:
            message = self._redact(record.getMessage())
        except Exception:
            # A message that cannot be formatted: the handler reports it as usual (a
            # filter that raised would instead raise in the code that logged).
            return True
        # Formatted once, here: the handler's formatter reads the final text.
        record.msg, record.args = self._controls.sub(_escaped, message), None
        return True


def key_value_fields(fmt: object, args: object) -> dict[str, object]:
    """Return the key=value fields of a gateway.* log call, from its format and arguments.

    Keys come from our format strings only (`path=%s`, `status=503`), never from the
    formatted text, so a client's text (a path holding " status=200") cannot add a field.
    """
    if not isinstance(fmt, str):
        return {}
    fields: dict[str, object] = {
        key: int(value) if value.isdigit() else value for key, value in _LITERAL_FIELD.findall(fmt)
    }
    values = list(args) if isinstance(args, tuple) else []
    for match in _PLACEHOLDER.finditer(fmt):
        if match.group() == "%%":
            continue
        if not values:
            break
        value = values.pop(0)
        start = match.start()
        word = fmt[fmt.rfind(" ", 0, start) + 1 : start]  # "path=" in "... path=%s"
        if not (word.endswith("=") and word[:-1].isidentifier()):
            continue
        if isinstance(value, str):
            value = escape_controls(value)  # as the message shows it
        elif isinstance(value, float) and match.group(1) is not None:
            value = round(value, int(match.group(1)))
        elif not isinstance(value, int | None):
            value = escape_controls(str(value))
        fields[word[:-1]] = value
    return fields


class KeyValueFields(logging.Filter):
    """Keep the key=value fields of gateway.* lines for the JSON formatter (before SafeMessage)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("gateway."):
            try:
                fields = key_value_fields(record.msg, record.args)
            except Exception:  # a malformed call: its message is reported as usual
                fields = {}
            setattr(record, FIELDS, fields)
        return True


class JsonFormatter(logging.Formatter):
    """Write a record as one JSON object on one line (docs/operations.md "Logging").

    `ts` (UTC, milliseconds), `level`, `logger`, `msg`, `pid`; `exc` with a traceback; and
    for our key=value lines, `event` (the first word) and one field per key.
    """

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if "\x1b" in msg:  # werkzeug's colours: nothing to colour in JSON
            msg = _COLOUR.sub("", msg)
        created = time.gmtime(record.created)
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": msg,
            "pid": record.process,
        }
        fields = getattr(record, FIELDS, None)
        if fields is not None:
            event = msg.split(" ", 1)[0]
            if event and "=" not in event:
                entry["event"] = event
            entry.update((k, v) for k, v in fields.items() if k not in _BASE_KEYS)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _dumps(entry)


def _dumps(entry: dict[str, object]) -> str:
    try:
        text = orjson.dumps(entry, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an integer past 64 bits
        text = json.dumps(entry, default=str)
    return _RAW_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _Stderr(logging.StreamHandler):
    """A JSON handler that writes to whatever sys.stderr is at the time (as lastResort does)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)
        self.setFormatter(JsonFormatter())
        self._gateway = True

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def _ours(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, "_gateway", False)), None)


def configure(level: int, log_format: str | None = None) -> None:
    """Send gateway logs to stderr at `level`; make every message safe to write.

    `log_format` is "text" or "json" (LOG_FORMAT); None keeps the one set before.
    """
    logger = logging.getLogger("gateway")
    logger.setLevel(level)
    if _ours(logger) is None:
        # On the handler, not the logger: it then sees the records of every gateway.* logger
        # and of Flask's app logger ("gateway"), whose exception line holds the path.
        handler = logging.StreamHandler(sys.stderr)
        handler._gateway = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error"):
        library = logging.getLogger(name)
        if not any(isinstance(f, SafeMessage) for f in library.filters):
            werkzeug = name == "werkzeug"
            library.addFilter(SafeMessage(keep_colours=werkzeug, literal_ok=werkzeug))
    set_format(log_format or _format)


def set_format(log_format: str) -> None:
    """Write every log line from now on as "text" (key=value) or "json" (one object a line)."""
    global _format
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    switched, _format = log_format != _format, log_format
    as_json = log_format == "json"
    handler = _ours(logging.getLogger("gateway"))
    if handler is not None:
        for old in list(handler.filters):
            handler.removeFilter(old)
        if as_json:
            handler.addFilter(KeyValueFields())
        # Our lines hold no tokens (and "Bearer header" in a message must stay readable).
        handler.addFilter(SafeMessage(redact_tokens=False))
        handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    if switched:
        _switch_libraries(as_json)


def _switch_libraries(as_json: bool) -> None:
    # The dev server: werkzeug adds a handler of its own (text, coloured) unless it has one.
    werkzeug = logging.getLogger("werkzeug")
    if as_json:
        werkzeug.addHandler(_Stderr())
    elif (handler := _ours(werkzeug)) is not None:
        werkzeug.removeHandler(handler)
    # Loggers of other libraries have no handler: logging writes their warnings (and Python's
    # own, once captured) through lastResort; in JSON here, tokens redacted.
    if as_json:
        logging.lastResort = _Stderr(logging.WARNING)
        logging.lastResort.addFilter(SafeMessage())
    else:
        logging.lastResort = _TEXT_LAST_RESORT
    logging.captureWarnings(as_json)


def json_formatted(name: str) -> None:
    """Have every handler of the logger `name` write JSON lines."""
    for handler in logging.getLogger(name).handlers:
        handler.setFormatter(JsonFormatter())


def json_gunicorn_logger() -> type:
    """Return gunicorn's logger class with its error and access lines in JSON (logger_class).

    gunicorn builds the handlers (--error-logfile, --access-logfile, syslog, logconfig)
    in `setup`, at start and on every reload; this class then gives them its formatter.
    """
    from gunicorn.glogging import Logger  # only under gunicorn: it does not import everywhere

    class JsonLogger(Logger):
        def setup(self, cfg) -> None:
            super().setup(cfg)
            json_formatted("gunicorn.error")
            json_formatted("gunicorn.access")

    return JsonLogger


def report_fatal(message: str) -> None:
    """Write why start-up stops to stderr as one line: the text, or a JSON object."""
    if _format == "json":
        record = logging.makeLogRecord(
            {"name": "gateway.config", "levelno": 50, "levelname": "CRITICAL", "msg": message}
        )
        message = JsonFormatter().format(record)
    print(message, file=sys.stderr, flush=True)
