"""Logging: one key=value line per event, the level from LOG_LEVEL, and no secrets.

Tokens travel in `?token=` on WebSocket upgrades, so every request line that a server
library writes (werkzeug's dev server, gunicorn's access log) passes a filter that redacts
them; our own lines log the path without its query string and never a header or a body.
"""

from __future__ import annotations

import logging
import re
import sys

_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;])(?:token|access_token|jwt)=)[^&\s\"']*", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)


def redact(text: str) -> str:
    """Replace token values in a log text by [redacted]."""
    return _BEARER.sub(r"\1[redacted]", _TOKEN_IN_QUERY.sub(r"\1[redacted]", text))


class RedactTokens(logging.Filter):
    """A logging filter that strips token values from a record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(level: int) -> None:
    """Send gateway logs to stderr at `level`; redact library request lines."""
    logger = logging.getLogger("gateway")
    logger.setLevel(level)
    if not any(getattr(h, "_gateway", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._gateway = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error"):
        library = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in library.filters):
            library.addFilter(RedactTokens())
