"""The OpenAPI 3.1 document of every HTTP route (docs/rest-api.md), served at /openapi.json.

Python data beside the blueprints rather than a YAML or JSON file: what routes share (the
error shape, the token, a token route's 401, a draining server's 503) is written once and
named, in `openapi_components`; the schemas are in `openapi_schemas`, their limits constants
pinned to the code by tests/test_openapi.py, which also fails when a route is missing here
or a path here is not routed. Adding a route is one `operation(...)` entry below.
tests/integration/test_live_schemathesis.py checks a live gunicorn's answers against it.
"""

from __future__ import annotations

from typing import Any

from gateway.http.openapi_components import (
    answer,
    any_json,
    components,
    error,
    event_stream,
    links,
    operation,
    param,
    path_param,
    text,
    topic_errors,
)
from gateway.http.openapi_schemas import IDEMPOTENCY_KEY, LAST_EVENT_ID, TOPIC_NAME, USERNAME, seq

Schema = dict[str, Any]

VERSION = "0.1.0"  # pyproject.toml's
# The two routes that hold a connection open also take the token as ?token=, which is what
# a browser's EventSource and WebSocket can send (docs/protocol.md).
BEARER_OR_QUERY = [{"bearer": []}, {"queryToken": []}]
HISTORY_LIMIT_MAX = 1000


def document() -> Schema:
    """Return the whole OpenAPI document, a fresh dict each time (callers may change it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PubSub Gateway",
            "version": VERSION,
            "description": (
                "Accounts, topics and their members, health probes, messages over HTTP with "
                "server-sent events (docs/rest-api.md), the web console and /metrics. "
                "`GET /ws` upgrades to the WebSocket of docs/protocol.md; who may do what "
                "with a topic is in docs/access.md. Every error is "
                '`{"error": "..."}`, with a `code` on a 429.'
            ),
        },
        "servers": [{"url": "/"}],
        "paths": {**_accounts(), **_topics(), **_messages(), **_probes(), **_web()},
        "components": components(),
    }


def _accounts() -> Schema:
    return {
        "/users/register": {
            "post": operation(
                "register",
                "Create an account; answers it with a token",
                {201: answer("Registered", "the account and a token")}
                | {400: "BadRequest", 409: "Conflict", 413: "TooLarge", 429: "RateLimited"},
                auth=None,
                body="Registration",
            )
        },
        "/users/login": {
            "post": operation(
                "login",
                "Check a username and password; answers a fresh token",
                {200: answer("LoggedIn", "the account and a token"), 400: "BadRequest"}
                | {401: error("wrong credentials (the same answer for an unknown user)")}
                | {413: "TooLarge", 429: "RateLimited"},
                auth=None,
                body="Login",
            )
        },
        "/users/profile": {
            "get": operation(
                "profile",
                "The token's account",
                {200: answer("Profile", "the account"), 404: error("the account is gone")},
            )
        },
    }


def _topics() -> Schema:
    name, username = path_param("name", TOPIC_NAME), path_param("username", USERNAME)
    on_a_topic = ("deleteTopic", "listMembers", "addMember", "publish", "history", "events")
    created = answer("Created", "created", links=links(*on_a_topic, name="topic"))
    to_remove = links("removeMember", name="topic", username="member")
    added = answer("MemberAdded", "a member now", links=to_remove)
    member_errors = topic_errors("an unknown topic, or (to its owner or an admin) user")
    return {
        "/topics": {
            "get": operation(
                "listTopics",
                "The topics the caller may read (an admin: all of them)",
                {200: answer("TopicList", "the topics")},
            ),
            "post": operation(
                "createTopic",
                "Create a topic, owned by the caller",
                {201: created, 400: "BadRequest", 409: "Conflict", 413: "TooLarge"}
                | {429: "LimitExceeded"},
                body="NewTopic",
            ),
        },
        "/topics/{name}": {
            "delete": operation(
                "deleteTopic",
                "Delete a topic (its owner or an admin); its subscribers are told",
                {200: answer("Deleted", "deleted")} | topic_errors(),
                params=[name],
            )
        },
        "/topics/{name}/members": {
            "get": operation(
                "listMembers",
                "A topic's members, its owner among them (to its members and admins)",
                {200: answer("Members", "the usernames, sorted")} | topic_errors(),
                params=[name],
            )
        },
        "/topics/{name}/members/{username}": {
            "put": operation(
                "addMember",
                "Make a user a member (the owner or an admin); idempotent",
                {200: added} | member_errors,
                params=[name, username],
            ),
            "delete": operation(
                "removeMember",
                "Take a user off the members (the owner or an admin); idempotent",
                {200: answer("MemberRemoved", "no longer a member")} | member_errors,
                params=[name, username],
            ),
        },
    }


def _messages() -> Schema:
    name = path_param("name", TOPIC_NAME)
    since_seq = param("query", "since_seq", seq(), "the last seq received (default 0)")
    epoch = param("query", "epoch", {"type": "string"}, "the epoch of an earlier answer")
    limit = {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT_MAX, "default": 100}
    key = "a key seen in the last 5 minutes answers the first publish again"
    last_id = "the last id seen: resume after it (wins over since_seq)"
    published = "published (or, for a known Idempotency-Key, the first result again)"
    published = answer("Published", published, links=links("history", "events", name="topic"))
    return {
        "/topics/{name}/messages": {
            "post": operation(
                "publish",
                "Publish a message to a topic",
                {201: published} | topic_errors() | {413: "TooLarge", 429: "RateLimited"},
                params=[name, param("header", "Idempotency-Key", IDEMPOTENCY_KEY, key)],
                body="Message",
            ),
            "get": operation(
                "history",
                "The history ring's messages after since_seq, oldest first",
                {200: answer("History", "the messages"), 414: "UriTooLong"} | topic_errors(),
                params=[name, since_seq, param("query", "limit", limit, "at most"), epoch],
            ),
        },
        "/topics/{name}/events": {
            "get": operation(
                "events",
                "Follow a topic with server-sent events",
                {200: event_stream()}
                | topic_errors()
                | {403: error("a foreign Origin, or the topic's subscribe policy refuses")}
                | {414: "UriTooLong", 429: "LimitExceeded"},
                auth=BEARER_OR_QUERY,
                params=[name, param("header", "Last-Event-ID", LAST_EVENT_ID, last_id)]
                + [since_seq, epoch],
            )
        },
        "/ws": {
            "get": operation(
                "websocket",
                "Upgrade to the WebSocket of docs/protocol.md",
                {101: {"description": "switched to the WebSocket protocol"}}
                | {400: error("not a well-formed WebSocket upgrade (a plain GET included)")}
                | {403: error("a foreign Origin"), 414: "UriTooLong", 429: "LimitExceeded"},
                auth=BEARER_OR_QUERY,
            )
        },
    }


def _probes() -> Schema:
    return {
        "/health": {
            "get": operation(
                "health",
                "Uptime, topic count and subscription count",
                {200: answer("Health", "the counts")},
                auth=None,
            )
        },
        "/livez": {
            "get": operation(
                "livez",
                "Alive while the process serves requests (also while it drains)",
                {200: answer("Alive", "alive")},
                auth=None,
                drains=False,
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Whether this worker can serve, naming each failing check",
                {200: answer("Ready", "every check is ok")}
                | {503: answer("NotReady", "not ready; each failing check says why")},
                auth=None,
                drains=False,
            )
        },
        "/stats": {
            "get": operation(
                "stats",
                "Messages and subscribers of each topic whose subscribe policy is anyone",
                {200: answer("Stats", "per topic")},
                auth=None,
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                {200: any_json("the OpenAPI document")},
                auth=None,
            )
        },
    }


def _web() -> Schema:
    """The web console (docs/console.md) and the Prometheus scrape (docs/operations.md)."""
    page = text("the console page", "text/html")
    moved = {"description": "the page is /console", "headers": {"Location": {"schema": {}}}}
    same = {"description": "not changed since the ETag sent as If-None-Match"}
    origin = {"type": "string", "pattern": "^https?://[^\\s/?#]{1,260}$"}
    origin = param("query", "origin", origin, "the page's origin") | {"required": True}
    file = text("the file", "text/html", "text/css", "text/javascript", "image/svg+xml")
    # Another route's name (config.json) and a path of several segments are not one file.
    filename = path_param("filename", "^(?!config\\.json$)[^/]+$")
    scrape = text("this host's metrics, Prometheus text format", "text/plain; version=0.0.4")
    metrics_401 = error("METRICS_TOKEN is set and the request does not send it")
    return {
        "/console": {
            "get": operation("console", "The web console", {200: page, 304: same}, auth=None)
        },
        "/console/": {"get": operation("consoleSlash", "To /console", {308: moved}, auth=None)},
        "/console/config.json": {
            "get": operation(
                "consoleConfig",
                "Whether GET /ws accepts the page's origin (ALLOWED_CORS_ORIGIN)",
                {200: answer("ConsoleConfig", "the origin's verdict"), 400: "BadRequest"},
                auth=None,
                params=[origin],
            )
        },
        "/console/{filename}": {
            "get": operation(
                "consoleFile",
                "One of the console's files",
                {200: file, 304: same, 404: error("no such file")},
                auth=None,
                params=[filename],
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Every metric of this host's workers",
                {200: scrape, 401: metrics_401},
                auth=[{}, {"metricsToken": []}],  # a token only when METRICS_TOKEN is set
            )
        },
    }
