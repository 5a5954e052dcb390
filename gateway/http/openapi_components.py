"""The shared parts of the OpenAPI document (gateway.http.openapi) and the builders of its operations.

`components()` is the document's `components`: the answers many routes share (every error is
the one shape of gateway.http.errors), their headers, the ways to send a token, and the
schemas of `openapi_schemas`. `operation(...)` describes one route, adding what every token
route and every draining server answer.
"""

from __future__ import annotations

from typing import Any

from gateway.http.openapi_schemas import schemas

Schema = dict[str, Any]

BEARER = [{"bearer": []}]
# A URL cannot carry `.` or `..` as a path segment: clients remove such dot segments
# (RFC 3986), so in a path those two names are only reachable percent-encoded (%2E).
NOT_A_DOT_SEGMENT = "(?!\\.\\.?$)"


def components() -> Schema:
    """Return the document's `components`, a fresh dict each time."""
    bearer = "the token of POST /users/register or POST /users/login"
    query = "the same token, for clients that cannot set a header (EventSource, WebSocket)"
    unavailable = (
        "the server is draining, the broker is down, or (SSE, WebSocket) the worker is at "
        "its connection limit: retry after Retry-After seconds when given"
    )
    return {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            | {"description": bearer},
            "queryToken": {"type": "apiKey", "in": "query", "name": "token"}
            | {"description": query},
            "metricsToken": {"type": "http", "scheme": "bearer"}
            | {"description": "METRICS_TOKEN, when the gateway sets one"},
        },
        "responses": {
            "BadRequest": error("a bad body, name, parameter or header"),
            "Unauthorized": error("the token is missing, malformed, expired or wrongly signed"),
            "Forbidden": error("the topic's access refuses the caller (docs/access.md)"),
            "Conflict": error("the name is taken"),
            "TooLarge": error("the body is larger than MAX_MESSAGE_BYTES"),
            "RateLimited": error("too many: retry after Retry-After seconds", "RateLimited"),
            "LimitExceeded": error("a quota is reached: free something first", "LimitExceeded"),
            "Unavailable": error(unavailable, retry=True),
            # gunicorn writes this one itself, before the app: no X-Request-ID (gateway.worker).
            "UriTooLong": error("the path and query are longer than 4094 bytes") | {"headers": {}},
        },
        "headers": {
            "X-Request-ID": {
                "description": "the request's id, as in its log line: yours if sane",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            },
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "integer", "minimum": 0},
            },
        },
        "schemas": schemas(),
    }


def answer(schema: str, description: str, links: Schema | None = None) -> Schema:
    """A JSON answer whose body is the named schema."""
    content = {"application/json": {"schema": ref("schemas", schema)}}
    found = {"description": description, "headers": _headers(), "content": content}
    return found | {"links": links} if links else found


def error(description: str, schema: str = "Error", retry: bool = False) -> Schema:
    """An error answer: `{"error": ...}` (gateway.http.errors), Retry-After when it may say."""
    headers = _headers()
    if retry or schema == "RateLimited":
        headers["Retry-After"] = ref("headers", "Retry-After")
    content = {"application/json": {"schema": ref("schemas", schema)}}
    return {"description": description, "headers": headers, "content": content}


def event_stream() -> Schema:
    """The SSE route's 200: in OpenAPI 3.1, `schema` describes one event of the stream."""
    content = {"text/event-stream": {"schema": ref("schemas", "SseEvent")}}
    description = "one event per message, `: ping` comments as heartbeats"
    return {"description": description, "headers": _headers(), "content": content}


def any_json(description: str) -> Schema:
    """A JSON answer of no particular shape."""
    content = {"application/json": {"schema": {"type": "object"}}}
    return {"description": description, "headers": _headers(), "content": content}


def ref(kind: str, name: str) -> Schema:
    """A reference to a component: ref("schemas", "TopicName")."""
    return {"$ref": f"#/components/{kind}/{name}"}


def operation(
    operation_id: str,
    summary: str,
    responses: dict[int, Schema | str],
    *,
    auth: list | None = BEARER,
    params: list | None = None,
    body: str | None = None,
    drains: bool = True,
) -> Schema:
    """Describe one operation; a response given as a string names a shared one.

    A token route's 401 and a draining server's 503 are added here (docs/rest-api.md).
    """
    if auth:
        responses = {401: "Unauthorized", **responses}
    if drains:
        responses = {503: "Unavailable", **responses}
    found: Schema = {"operationId": operation_id, "summary": summary, "security": auth or []}
    if params:
        found["parameters"] = params
    if body:
        content = {"application/json": {"schema": ref("schemas", body)}}
        found["requestBody"] = {"required": True, "content": content}
    found["responses"] = {
        str(status): ref("responses", answer) if isinstance(answer, str) else answer
        for status, answer in sorted(responses.items())
    }
    return found


def topic_errors(not_found: str = "an unknown topic") -> dict[int, Schema | str]:
    """What every route of one topic may refuse: a bad name, the topic's access, no topic."""
    return {400: "BadRequest", 403: "Forbidden", 404: error(not_found)}


def links(*targets: str, **parameters: str) -> Schema:
    """OpenAPI links: where an answer leads, for clients and for stateful tests to follow.

    Each parameter is taken from the answer's body: links("history", name="topic").
    """
    taken = {name: f"$response.body#/{field}" for name, field in parameters.items()}
    return {target: {"operationId": target, "parameters": taken} for target in targets}


def path_param(name: str, pattern: str) -> Schema:
    """A path parameter: the name's rule, less the two names a URL path cannot carry."""
    rule = {"type": "string", "pattern": "^" + NOT_A_DOT_SEGMENT + pattern.removeprefix("^")}
    return {"name": name, "in": "path", "required": True, "schema": rule}


def text(description: str, *media_types: str) -> Schema:
    """An answer that is a file or a text, in one of `media_types`."""
    content = {media_type: {"schema": {"type": "string"}} for media_type in media_types}
    return {"description": description, "content": content}


def param(where: str, name: str, schema: Schema, description: str) -> Schema:
    """A query or header parameter."""
    return {"name": name, "in": where, "schema": schema, "description": description}


def _headers() -> Schema:
    return {"X-Request-ID": ref("headers", "X-Request-ID")}
