"""Messages over plain HTTP (docs/rest-api.md "Messages over HTTP and server-sent events"): publish, history, and a server-sent-events stream."""

from __future__ import annotations

import logging
import re
import uuid

from flask import Blueprint, Response, g, request
from flask_jwt_extended import get_jwt_identity, jwt_required

from gateway import protocol
from gateway.accounts.tokens import AuthError, token_from, verify
from gateway.brokers import TopicNotFound
from gateway.guards import access, admission
from gateway.guards.rates import publish_limited
from gateway.http.bodies import json_body, json_response, valid_topic_name
from gateway.http.errors import ApiError, error_response
from gateway.state import get_broker, get_registry, get_roles, get_settings
from gateway.transport import libraries
from gateway.transport.sse import SseStream

bp = Blueprint("messages", __name__)

MAX_LIMIT = 1000
_SEQ = re.compile(r"[0-9]{1,18}")  # fits the 64-bit counters of every broker
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as HTTP tokens go


@bp.post("/topics/<name>/messages")
@jwt_required()
@publish_limited
def publish(name: str):
    """Publish `{"id"?, "payload"}`; an Idempotency-Key makes a retry return the first result."""
    valid_topic_name(name)
    body = json_body()
    message_id = body.get("id")
    if message_id is None:
        message_id = uuid.uuid4().hex
    elif not isinstance(message_id, str) or not message_id:
        raise ApiError(400, "id must be a non-empty string (or left out to get one)")
    if "payload" not in body:
        raise ApiError(400, "payload is required (null is allowed)")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(400, "Idempotency-Key must be 1-255 visible ASCII characters")
    payload = protocol.encode_payload(body["payload"])  # before a seq is spent: all or nothing
    user = get_jwt_identity()
    try:
        event = access.run_as(
            access.PUBLISH,
            user,
            name,
            get_roles(),
            lambda check: get_broker().publish(
                name, message_id, payload, idempotency_key=key, publisher=user, check=check
            ),
        )
    except TopicNotFound:
        raise _not_found(name) from None
    body = {
        "topic": event.topic,
        "id": event.id,
        "seq": event.seq,
        "timestamp": protocol.iso(event.timestamp),
    }
    return json_response(body, 201)


@bp.get("/topics/<name>/messages")
@jwt_required()
def history(name: str):
    """Return the ring's messages after `since_seq`, oldest first, at most `limit`."""
    valid_topic_name(name)
    since_seq = _seq_arg(request.args.get("since_seq"), "since_seq")
    limit = request.args.get("limit", "100")
    if not _SEQ.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    broker = get_broker()
    try:
        topic_access = broker.access(name)
        access.require(access.SUBSCRIBE, topic_access, get_jwt_identity(), name, get_roles())
        found = broker.history(name, since_seq or 0, int(limit), request.args.get("epoch") or None)
    except TopicNotFound:
        raise _not_found(name) from None
    return json_response(
        {
            "topic": name,
            "seq": found.seq,
            "epoch": found.epoch,
            "complete": found.complete,
            "messages": [protocol.message(event) for event in found.events],
        }
    )


@bp.get("/topics/<name>/events")
def events(name: str):
    """Stream the topic's events as server-sent events; Last-Event-ID resumes."""
    # CORS only hides a response from a foreign page: the stream would still be opened and
    # held (a connection slot, a subscription). So the Origin is checked as on /ws (README,
    # WebSocket protocol).
    origin = request.headers.get("Origin")
    if not get_settings().origin_allowed(origin):
        logging.getLogger("gateway.sse").info("sse_rejected status=403 origin=%r", origin)
        return error_response(403, "origin not allowed")
    try:
        g.user_id = verify(token_from(request))
    except AuthError as exc:
        return error_response(401, str(exc))
    valid_topic_name(name)
    # A browser's EventSource reconnects to the same URL with Last-Event-ID set to the last
    # id it saw, so the header is newer than the query and wins.
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None:
        since_seq = _seq_arg(last_event_id.strip(), "Last-Event-ID")
    else:
        since_seq = _seq_arg(request.args.get("since_seq"), "since_seq")
    settings = get_settings()
    registry = get_registry()
    # SSE streams count like WebSockets: against the worker's capacity and the user's
    # connections; the stream gives its claim back when it closes.
    admission.admit_connection(g.user_id, "sse")

    def on_close(stream: SseStream) -> None:
        registry.remove_stream(stream)
        claim.release()

    stream = SseStream(
        get_broker(),
        name,
        settings.subscriber_queue_size,
        settings.heartbeat_interval,
        sock=libraries.client_socket(request.environ),
        on_close=on_close,
        stream_id=g.request_id,
        user_id=g.user_id,
    )
    registry.add_stream(stream)
    claim = admission.take_claim()
    epoch = request.args.get("epoch") or None
    try:
        access.run_as(
            access.SUBSCRIBE,
            g.user_id,
            name,
            get_roles(),
            lambda check: stream.subscribe(since_seq, epoch, check),
        )
    except BaseException as exc:
        stream.close("subscribe_failed")
        if isinstance(exc, TopicNotFound):
            raise _not_found(name) from None
        raise
    response = Response(
        stream.frames(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # A response that is closed before its first chunk never runs the generator's cleanup.
    response.call_on_close(stream.close)
    return response


def _seq_arg(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not _SEQ.fullmatch(value):
        raise ApiError(400, f"{name} must be a non-negative integer")
    return int(value)


def _not_found(name: str) -> ApiError:
    return ApiError(404, f"topic {name!r} does not exist")
