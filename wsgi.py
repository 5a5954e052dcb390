"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app` or `flask --app wsgi run`."""

from __future__ import annotations

from gateway.app import create_app
from gateway.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None
