"""The JSON schemas of the OpenAPI document (gateway.http.openapi): bodies and answers.

The limits are docs/rest-api.md's "Fields and names": tests/test_openapi.py pins each one to
the code that enforces it, and the policies come from the brokers themselves. An object's
properties are all required unless it says otherwise: they are what every answer carries.
"""

from __future__ import annotations

from typing import Any

from gateway.brokers import PUBLISH_POLICIES, SUBSCRIBE_POLICIES
from gateway.protocol import LIMIT_EXCEEDED, RATE_LIMITED

Schema = dict[str, Any]

TOPIC_NAME = "^[A-Za-z0-9._:-]{1,128}$"
USERNAME = "^[A-Za-z0-9_.\\-@]{1,64}$"
PASSWORD_BYTES = (8, 72)
SEQ_MAX = 10**18 - 1  # a seq is at most 18 digits (blueprints/messages.py)
ROLES = ("user", "admin")
IDEMPOTENCY_KEY = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}
LAST_EVENT_ID = {"type": "string", "pattern": "^\\s*[0-9]{1,18}\\s*$"}
SSE_EVENTS = ("subscribed", "message", "dropped", "topic_deleted", "access_revoked", "shutdown")


def schemas() -> Schema:
    """Return `components.schemas`, a fresh dict each time."""
    return {
        **_errors(),
        **_accounts(),
        **_topics(),
        **_messages(),
        **_probes(),
        "SseEvent": {"oneOf": [_sse_event(event) for event in SSE_EVENTS]},
    }


def seq() -> Schema:
    """A topic's seq, or a count of them."""
    return {"type": "integer", "minimum": 0, "maximum": SEQ_MAX}


def _errors() -> Schema:
    return {
        "Error": _object(
            error={"type": "string", "description": "human readable"},
            code={"enum": [RATE_LIMITED, LIMIT_EXCEEDED], "description": "on a 429 only"},
            required=["error"],
        ),
        "RateLimited": _object(error={"type": "string"}, code={"const": RATE_LIMITED}),
        "LimitExceeded": _object(error={"type": "string"}, code={"const": LIMIT_EXCEEDED}),
    }


def _accounts() -> Schema:
    low, high = PASSWORD_BYTES
    password = {
        "type": "string",
        "minLength": low,
        "maxLength": high,
        "description": f"{low}-{high} bytes of UTF-8 (the lengths here count characters)",
    }
    email = {
        "type": ["string", "null"],
        "pattern": "^[^@]*[^@\\s][^@]*@[^@]*[^@\\s][^@]*$",
        "description": "optional: exactly one @ with text on both sides",
    }
    user = _object(
        id={"type": "string"},
        username=_ref("Username"),
        email={"type": ["string", "null"]},
        role={"enum": list(ROLES)},
        created_at=_ref("Time"),
        updated_at=_ref("Time"),
    )
    token = {"type": "string", "description": "a JWT (HS256): send it as a Bearer token"}
    return {
        "Username": {
            "type": "string",
            "pattern": USERNAME,
            "description": "1-64 of ASCII letters, digits and _.-@ (case-sensitive)",
        },
        "Time": {"type": "string", "format": "date-time", "description": "UTC, ms, Z"},
        "Registration": _object(
            username=_ref("Username"),
            password=password,
            email=email,
            required=["username", "password"],
        ),
        "Login": _object(username={"type": "string"}, password={"type": "string"}),
        "User": user,
        "Registered": _object(status={"const": "registered"}, user=_ref("User"), token=token),
        "LoggedIn": _object(status={"const": "logged_in"}, user=_ref("User"), token=token),
        "Profile": _object(user=_ref("User")),
    }


def _topics() -> Schema:
    publish, subscribe = {"enum": list(PUBLISH_POLICIES)}, {"enum": list(SUBSCRIBE_POLICIES)}
    return {
        "TopicName": {
            "type": "string",
            "pattern": TOPIC_NAME,
            "description": "1-128 of ASCII letters, digits and ._:-",
        },
        "NewTopic": _object(
            name=_ref("TopicName"),
            publish=publish | {"default": "anyone"},
            subscribe=subscribe | {"default": "anyone"},
            required=["name"],
        ),
        "Created": _object(
            status={"const": "created"},
            topic=_ref("TopicName"),
            publish=publish,
            subscribe=subscribe,
        ),
        "Topic": _object(
            name=_ref("TopicName"),
            subscribers=_count(),
            owner={"type": ["string", "null"], "description": "a username; null once gone"},
            publish=publish,
            subscribe=subscribe,
        ),
        "TopicList": _object(topics={"type": "array", "items": _ref("Topic")}),
        "Deleted": _object(status={"const": "deleted"}, topic=_ref("TopicName")),
        "Members": _object(
            topic=_ref("TopicName"), members={"type": "array", "items": _ref("Username")}
        ),
        "MemberAdded": _member("added"),
        "MemberRemoved": _member("removed"),
    }


def _messages() -> Schema:
    return {
        "Message": _object(
            id={
                "type": ["string", "null"],
                "minLength": 1,
                "description": "left out or null: a uuid4 hex is given",
            },
            payload={"description": "any JSON, null included"},
            required=["payload"],
        ),
        "Published": _object(
            topic=_ref("TopicName"), id={"type": "string"}, seq=seq(), timestamp=_ref("Time")
        ),
        "StoredMessage": _object(
            id={"type": "string"},
            payload={"description": "as published"},
            topic=_ref("TopicName"),
            timestamp=_ref("Time"),
            seq=seq(),
        ),
        "History": _object(
            topic=_ref("TopicName"),
            seq=seq(),
            epoch={"type": "string"},
            complete={"type": "boolean", "description": "false: some messages are gone"},
            messages={"type": "array", "items": _ref("StoredMessage")},
        ),
    }


def _probes() -> Schema:
    checks = {
        "type": "object",
        "description": "ok or the reason, per check (a broker may add its own)",
        "required": ["broker", "database", "heartbeat", "draining"],
        "additionalProperties": {"type": "string"},
    }
    return {
        "Health": _object(uptime_sec=_count(), topics=_count(), subscribers=_count()),
        "ConsoleConfig": _object(origin={"type": "string"}, origin_allowed={"type": "boolean"}),
        "Alive": _object(status={"const": "alive"}),
        "Ready": _object(status={"const": "ready"}, checks=checks),
        "NotReady": _object(
            status={"const": "unavailable"}, error={"type": "string"}, checks=checks
        ),
        "Stats": _object(
            topics={
                "type": "object",
                "propertyNames": _ref("TopicName"),
                "additionalProperties": _object(messages=_count(), subscribers=_count()),
            }
        ),
    }


def _sse_event(name: str) -> Schema:
    """One event as an EventSource sees it: its type, its id (a seq), its data (JSON)."""
    topic = {"type": "string"}
    data = {
        "subscribed": _object(
            topic=topic, seq=seq(), epoch={"type": "string"}, recovered={"type": "boolean"}
        ),
        "message": _ref("StoredMessage"),
        "dropped": _object(topic=topic, count=seq(), from_seq=seq(), to_seq=seq()),
    }.get(name, _object(topic=topic))
    return _object(
        event={"const": name},
        data={"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        id={"type": "string", "pattern": "^[0-9]{1,18}$", "description": "the seq"},
        required=["event", "data"],
    )


def _member(status: str) -> Schema:
    return _object(status={"const": status}, topic=_ref("TopicName"), member={"type": "string"})


def _count() -> Schema:
    return {"type": "integer", "minimum": 0}


def _object(*, required: list[str] | None = None, **properties: Schema) -> Schema:
    """An object schema; every property is required unless `required` names fewer."""
    names = list(properties) if required is None else required
    return {"type": "object", "required": names, "properties": properties}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}
