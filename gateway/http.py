"""Request helpers shared by the REST blueprints."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, request

from gateway import jsondoc
from gateway.errors import ApiError
from gateway.state import get_settings


def json_body() -> dict[str, Any]:
    """Return the request body as a JSON object, whatever its Content-Type, or raise 400.

    A body nested deeper than MAX_JSON_DEPTH is refused like one that is not JSON.
    """
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = jsondoc.loads(raw, get_settings().max_json_depth) if raw else None
    except jsondoc.JsonError as exc:
        raise ApiError(400, f"request body must be valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def json_response(body: Any, status: int = 200) -> Response:
    """Serialise `body` with orjson into a JSON response."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def string_field(body: dict[str, Any], name: str) -> str:
    """Return a required string field of a body, or raise 400 naming it."""
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value
