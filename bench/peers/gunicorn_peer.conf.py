"""Gunicorn settings shared by the bench peers: one gevent worker, many connections."""

from __future__ import annotations

import os
import resource

bind = f"127.0.0.1:{os.environ.get('PORT', '8100')}"
workers = 1
worker_class = "gevent"
# gunicorn's default of 1000 would leave connection 1001 hanging (README "Decisions and limits")
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
backlog = 4096
loglevel = os.environ.get("LOG_LEVEL", "warning")
accesslog = None
graceful_timeout = 3
timeout = 120


def on_starting(server):
    """Raise the fd limit so worker_connections can actually be reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
