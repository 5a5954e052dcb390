"""Request helpers shared by the REST blueprints: JSON bodies, JSON replies, topic names."""

from __future__ import annotations

import re
from typing import Any

import orjson
from flask import Response, request

from gateway import jsondoc
from gateway.http.errors import ApiError
from gateway.state import get_settings

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_topic_name(name: object) -> str:
    """Return `name` if it is a valid topic name (docs/rest-api.md), else raise a 400."""
    if not isinstance(name, str) or not _TOPIC_NAME.fullmatch(name):
        raise ApiError(400, "topic name must be 1-128 characters of ASCII letters, digits and ._:-")
    return name


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
    """Serialise `body` with orjson into a JSON response.

    It ends with a newline, as Flask's `jsonify` (every error reply) does, so that curl's
    output does not run into the shell prompt.
    """
    return Response(orjson.dumps(body) + b"\n", status=status, mimetype="application/json")


def string_field(body: dict[str, Any], name: str) -> str:
    """Return a required string field of a body, or raise 400 naming it."""
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value
