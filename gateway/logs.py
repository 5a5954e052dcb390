"""Logging: one key=value line per event, the level from LOG_LEVEL, and no secrets.

Tokens travel in `?token=` on WebSocket upgrades, so every request line that a server
library writes (werkzeug's dev server, gunicorn's access log) passes a filter that redacts
them; our own lines log the path without its query string and never a header or a body.

Log lines carry text that clients chose (paths, request ids, usernames, topics, origins).
The same filter escapes control characters in every message, ours and the libraries', so
that no such text can end a line and forge the next one (docs/operations.md "Logging").
"""

from __future__ import annotations

import logging
import re
import sys

_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;])(?:token|access_token|jwt)=)[^&\s\"']*", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
# C0 (line feed, carriage return, escape...), DEL, C1 (NEL...) and the Unicode line and
# paragraph separators: each can end a line in some log viewer or drive a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same, but complete colour codes (SGR) are kept: werkzeug colours its request lines
# after escaping the request's own text, and a colour cannot start a line.
_CONTROL_BUT_COLOURS = re.compile("(\x1b\\[[0-9;]*m)|[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
    by the handler, and keeps its lines.
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


def configure(level: int) -> None:
    """Send gateway logs to stderr at `level`; make every message safe to write."""
    logger = logging.getLogger("gateway")
    logger.setLevel(level)
    if not any(getattr(h, "_gateway", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        # On the handler, not the logger: it then sees the records of every gateway.* logger
        # and of Flask's app logger ("gateway"), whose exception line holds the path. Our
        # lines hold no tokens (and "Bearer header" in a message must stay readable).
        handler.addFilter(SafeMessage(redact_tokens=False))
        handler._gateway = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error"):
        library = logging.getLogger(name)
        if not any(isinstance(f, SafeMessage) for f in library.filters):
            werkzeug = name == "werkzeug"
            library.addFilter(SafeMessage(keep_colours=werkzeug, literal_ok=werkzeug))
