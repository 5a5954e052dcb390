"""Topics and observability (docs/rest-api.md): /topics, /health, /stats."""

from __future__ import annotations

import logging

from flask import Blueprint
from flask_jwt_extended import get_jwt_identity, jwt_required

from gateway.brokers import TopicExists, TopicNotFound
from gateway.http.bodies import json_body, json_response, valid_topic_name
from gateway.http.errors import ApiError
from gateway.state import get_broker, get_registry, get_user_store, uptime_seconds

bp = Blueprint("topics", __name__)
log = logging.getLogger("gateway.http")

# What /readyz always reports, "ok" or the reason; brokers may add their own (listener).
READY_CHECKS = ("broker", "database", "heartbeat", "draining")


@bp.get("/health")
def health():
    """Report uptime, topic count and subscription count."""
    broker = get_broker()
    return json_response(
        {
            "uptime_sec": uptime_seconds(),
            "topics": len(broker.topics()),
            "subscribers": broker.subscriber_count(),
        }
    )


@bp.get("/livez")
def livez():
    """Answer 200 while the process serves requests (also while it drains)."""
    return json_response({"status": "alive"})


@bp.get("/readyz")
def readyz():
    """Answer 200 when this worker can serve, else 503 naming each failing check.

    Checks: the broker (Redis reachable, its listener running and connected), the
    WebSocket heartbeat loop, the accounts database, and draining after SIGTERM.
    """
    problems = {**get_broker().problems(), **get_registry().problems()}
    try:
        get_user_store().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", said below
        problems["database"] = f"the accounts database is unreachable: {type(exc).__name__}"
    checks = {name: problems.get(name, "ok") for name in (*READY_CHECKS, *problems)}
    if not problems:
        return json_response({"status": "ready", "checks": checks})
    failing = ", ".join(sorted(problems))
    log.warning("not_ready failing=%s", failing)
    body = {"status": "unavailable", "error": f"not ready: {failing}", "checks": checks}
    return json_response(body, 503)


@bp.get("/stats")
def stats():
    """Report messages published and subscribers, per topic."""
    topics = {
        t.name: {"messages": t.messages, "subscribers": t.subscribers}
        for t in get_broker().topics()
    }
    return json_response({"topics": topics})


@bp.post("/topics")
@jwt_required()
def create_topic():
    """Create a topic."""
    name = valid_topic_name(json_body().get("name"))
    try:
        get_broker().create_topic(name, owner=get_jwt_identity())
    except TopicExists:
        raise ApiError(409, f"topic {name!r} already exists") from None
    return json_response({"status": "created", "topic": name}, 201)


@bp.get("/topics")
@jwt_required()
def list_topics():
    """List topics with their subscriber counts."""
    topics = [{"name": t.name, "subscribers": t.subscribers} for t in get_broker().topics()]
    return json_response({"topics": topics})


@bp.delete("/topics/<name>")
@jwt_required()
def delete_topic(name: str):
    """Delete a topic; its subscribers are told and stay connected."""
    valid_topic_name(name)
    try:
        get_broker().delete_topic(name)
    except TopicNotFound:
        raise ApiError(404, f"topic {name!r} does not exist") from None
    return json_response({"status": "deleted", "topic": name})
