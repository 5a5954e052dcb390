"""Topics, their members and observability (docs/rest-api.md, docs/access.md)."""

from __future__ import annotations

import logging

from flask import Blueprint
from flask_jwt_extended import get_jwt_identity, jwt_required

from gateway.brokers import PUBLISH_POLICIES, SUBSCRIBE_POLICIES, TopicExists, TopicNotFound
from gateway.guards import access
from gateway.http.bodies import json_body, json_response, valid_topic_name
from gateway.http.errors import ApiError
from gateway.state import get_broker, get_registry, get_roles, get_user_store, uptime_seconds

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
    """Report messages published and subscribers, per topic anyone may read (no login)."""
    topics = {
        t.name: {"messages": t.messages, "subscribers": t.subscribers}
        for t in get_broker().topics()
        if t.access.subscribe == "anyone"
    }
    return json_response({"topics": topics})


@bp.post("/topics")
@jwt_required()
def create_topic():
    """Create a topic owned by the caller, with its publish and subscribe policies."""
    body = json_body()
    name = valid_topic_name(body.get("name"))
    publish = _policy(body, "publish", PUBLISH_POLICIES)
    subscribe = _policy(body, "subscribe", SUBSCRIBE_POLICIES)
    try:
        get_broker().create_topic(
            name, owner=get_jwt_identity(), publish=publish, subscribe=subscribe
        )
    except TopicExists:
        raise ApiError(409, f"topic {name!r} already exists") from None
    body = {"status": "created", "topic": name, "publish": publish, "subscribe": subscribe}
    return json_response(body, 201)


def _policy(body: dict, field: str, choices: tuple[str, ...]) -> str:
    value = body.get(field, "anyone")
    if value not in choices:
        raise ApiError(400, f"{field} must be one of {', '.join(choices)}")
    return value


@bp.get("/topics")
@jwt_required()
def list_topics():
    """List the topics the caller may subscribe to, with owner, policies and subscribers."""
    user = get_jwt_identity()
    found = get_broker().topics()
    readable = [t for t in found if access.allowed(access.SUBSCRIBE, t.access, user)]
    if len(readable) < len(found) and not get_roles().is_admin(user):  # admins see all
        found = readable
    owners = get_user_store().get_many({t.owner for t in found if t.owner})
    topics = [
        {
            "name": t.name,
            "subscribers": t.subscribers,
            "owner": owners[t.owner].username if t.owner in owners else None,
            "publish": t.access.publish,
            "subscribe": t.access.subscribe,
        }
        for t in found
    ]
    return json_response({"topics": topics})


@bp.delete("/topics/<name>")
@jwt_required()
def delete_topic(name: str):
    """Delete a topic (its owner or an admin); its subscribers are told and stay connected."""
    valid_topic_name(name)
    broker = get_broker()
    try:
        access.run_as(
            access.DELETE,
            get_jwt_identity(),
            name,
            get_roles(),
            lambda check: broker.delete_topic(name, check),
        )
    except TopicNotFound:
        raise _not_found(name) from None
    return json_response({"status": "deleted", "topic": name})


@bp.get("/topics/<name>/members")
@jwt_required()
def list_members(name: str):
    """List a topic's members (the owner among them) to its members and admins."""
    topic_access = _access_for(access.SEE_MEMBERS, name)
    ids = set(topic_access.members) | ({topic_access.owner} if topic_access.owner else set())
    users = get_user_store().get_many(ids)
    return json_response({"topic": name, "members": sorted(u.username for u in users.values())})


@bp.put("/topics/<name>/members/<username>")
@jwt_required()
def add_member(name: str, username: str):
    """Make a user a member of the topic (its owner or an admin); idempotent."""
    _access_for(access.MANAGE_MEMBERS, name)
    member = _user(username)
    try:
        get_broker().add_member(name, member.id)
    except TopicNotFound:
        raise _not_found(name) from None
    log.info("member_added topic=%s member=%s", name, username)
    return json_response({"status": "added", "topic": name, "member": username})


@bp.delete("/topics/<name>/members/<username>")
@jwt_required()
def remove_member(name: str, username: str):
    """Take a user off the topic's members; a subscriber who can no longer read is cut off."""
    topic_access = _access_for(access.MANAGE_MEMBERS, name)
    member = _user(username)
    revoke = access.revokes_reading(topic_access, member.id, get_roles())
    try:
        get_broker().remove_member(name, member.id, revoke)
    except TopicNotFound:
        raise _not_found(name) from None
    log.info("member_removed topic=%s member=%s revoked=%s", name, username, revoke)
    return json_response({"status": "removed", "topic": name, "member": username})


def _access_for(action: str, name: str):
    """Return the topic's Access if the caller may do `action` (404 unknown, 403 not allowed)."""
    valid_topic_name(name)
    try:
        topic_access = get_broker().access(name)
    except TopicNotFound:
        raise _not_found(name) from None
    access.require(action, topic_access, get_jwt_identity(), name, get_roles())
    return topic_access


def _user(username: str):
    user = get_user_store().find(username)
    if user is None:
        raise ApiError(404, f"user {username!r} does not exist")
    return user


def _not_found(name: str) -> ApiError:
    return ApiError(404, f"topic {name!r} does not exist")
