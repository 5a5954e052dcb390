"""One JSON error shape for every HTTP error: {"error": "<human readable text>"}."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

from gateway.brokers import BrokerUnavailable, LimitExceeded
from gateway.guards.access import Forbidden

# The machine-readable `code` a 429 carries beside `error` is the one WebSocket error frames
# use: a client backs off differently from a rate limit (retry later) and a quota (free
# something first).
from gateway.protocol import LIMIT_EXCEEDED

log = logging.getLogger("gateway.http")


class ApiError(Exception):
    """A client mistake with its HTTP status (and, for some, a `code`)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after  # seconds, sent as Retry-After


def error_response(
    status: int, message: str, code: str | None = None, retry_after: int | None = None
):
    """Build the JSON error response; the request log line reports the message."""
    g.error = message
    response = jsonify(error=message, code=code) if code else jsonify(error=message)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)  # seconds
    return response


def register_error_handlers(app: Flask) -> None:
    """Make Flask's own errors, ours and unexpected ones all answer in the one shape."""

    @app.errorhandler(Forbidden)
    def forbidden(exc: Forbidden):
        return error_response(403, str(exc))

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.retry_after)

    @app.errorhandler(LimitExceeded)
    def limit_exceeded(exc: LimitExceeded):
        return error_response(429, str(exc), LIMIT_EXCEEDED)

    @app.errorhandler(BrokerUnavailable)
    def broker_unavailable(exc: BrokerUnavailable):
        log.error("broker_unavailable error=%s", exc)
        return error_response(503, "the message broker is unavailable; try again shortly")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = error_response(exc.code or 500, exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled_error")
        return error_response(500, "internal server error")
