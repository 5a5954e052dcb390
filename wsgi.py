"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app` or `flask --app wsgi run`."""

from __future__ import annotations

import os

from gateway import logs
from gateway.app import create_app
from gateway.config import ConfigError, log_format_from

try:
    # Before the app, so that its first lines and a configuration error are in LOG_FORMAT.
    logs.set_format(log_format_from(os.environ))
    app = create_app()
except ConfigError as exc:
    logs.report_fatal(f"configuration error: {exc}")
    raise SystemExit(1) from None
