"""One JSON error shape for every HTTP error: {"error": "<human readable text>"}."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

from gateway.broker import BrokerUnavailable

log = logging.getLogger("gateway.http")


class ApiError(Exception):
    """A client mistake with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str):
    """Build the JSON error response; the request log line reports the message."""
    g.error = message
    response = jsonify(error=message)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Make Flask's own errors, ours and unexpected ones all answer in the one shape."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message)

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
