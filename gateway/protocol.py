"""Every WebSocket frame shape (docs/protocol.md): inbound text to a command, outbound frames to JSON.

Nothing else in the code base builds frame dicts. Outbound functions return UTF-8 JSON bytes;
`gateway.transport.wsframes` wraps them into WebSocket frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import jsondoc
from gateway.brokers import Event

BAD_REQUEST = "BAD_REQUEST"
TOPIC_NOT_FOUND = "TOPIC_NOT_FOUND"
SLOW_CONSUMER = "SLOW_CONSUMER"
UNAUTHORIZED = "UNAUTHORIZED"
INTERNAL = "INTERNAL"
RATE_LIMITED = "RATE_LIMITED"
LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
FORBIDDEN = "FORBIDDEN"


class ProtocolError(Exception):
    """A client frame that cannot be served; becomes an `error` frame, the socket stays open."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    last_n: int
    request_id: str | None
    client_id: str | None
    since_seq: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topic: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    message_id: str
    payload: Any  # as parsed; `encode_payload` turns it into what the broker stores
    request_id: str | None


@dataclass(frozen=True, slots=True)
class Ping:
    request_id: str | None


Command = Subscribe | Unsubscribe | Publish | Ping


def decode(data: str | bytes, max_depth: int) -> Command:
    """Parse one client frame into a command, or raise ProtocolError(BAD_REQUEST).

    A frame nested deeper than `max_depth` (MAX_JSON_DEPTH) is refused whole.
    """
    if not isinstance(data, str):
        raise ProtocolError(BAD_REQUEST, "binary frames are not supported; send JSON text")
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(BAD_REQUEST, f"invalid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(BAD_REQUEST, "a frame must be a JSON object")
    request_id = frame.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(BAD_REQUEST, "request_id must be a string")
    try:
        jsondoc.check_depth(frame, max_depth, data)
    except jsondoc.JsonError as exc:
        # Parsed whole, so the reply can still name the request it refuses.
        raise ProtocolError(BAD_REQUEST, str(exc), request_id) from None
    client_id = frame.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        raise ProtocolError(BAD_REQUEST, "client_id must be a string", request_id)
    try:
        return _command(frame, request_id)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def _command(frame: dict, request_id: str | None) -> Command:
    kind = frame.get("type")
    if kind == "ping":
        return Ping(request_id)
    if kind not in ("subscribe", "unsubscribe", "publish"):
        what = "missing type" if kind is None else f"unknown type {kind!r}"
        raise ProtocolError(
            BAD_REQUEST, f"{what}; expected subscribe, unsubscribe, publish or ping"
        )
    topic = frame.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ProtocolError(BAD_REQUEST, "topic must be a non-empty string")
    if kind == "unsubscribe":
        return Unsubscribe(topic, request_id)
    if kind == "subscribe":
        return _subscribe(frame, topic, request_id)
    message = frame.get("message")
    if not isinstance(message, dict):
        raise ProtocolError(BAD_REQUEST, "message must be an object with id and payload")
    message_id = message.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise ProtocolError(BAD_REQUEST, "message.id must be a non-empty string")
    if "payload" not in message:
        raise ProtocolError(BAD_REQUEST, "message.payload is required (null is allowed)")
    return Publish(topic, message_id, message["payload"], request_id)


def _subscribe(frame: dict, topic: str, request_id: str | None) -> Subscribe:
    last_n = frame.get("last_n")
    since_seq = frame.get("since_seq")
    epoch = frame.get("epoch")
    if last_n is not None and since_seq is not None:
        raise ProtocolError(BAD_REQUEST, "send last_n or since_seq, not both")
    for name, value in (("last_n", last_n), ("since_seq", since_seq)):
        if value is not None and (type(value) is not int or value < 0):
            raise ProtocolError(BAD_REQUEST, f"{name} must be a non-negative integer")
    if epoch is not None and not isinstance(epoch, str):
        raise ProtocolError(BAD_REQUEST, "epoch must be a string")
    return Subscribe(topic, last_n or 0, request_id, frame.get("client_id"), since_seq, epoch)


def encode_payload(payload: Any) -> bytes:
    """Encode a published payload once, before it is given a seq.

    It cannot fail for what `jsondoc.loads` accepted, so a publish that got its seq is
    never lost to an encoding error later.
    """
    return orjson.dumps(payload)


def iso(timestamp: float) -> str:
    """Format epoch seconds as UTC ISO-8601 with milliseconds and a Z suffix."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _frame(body: dict) -> bytes:
    body["ts"] = iso(time.time())
    return orjson.dumps(body)


def _with_request_id(body: dict, request_id: str | None) -> dict:
    if request_id is not None:
        body["request_id"] = request_id
    return body


def ack(topic: str, request_id: str | None, seq: int | None = None, **extra: Any) -> bytes:
    """Encode an `ack`; a publish ack carries the message's seq, a subscribe ack the topic's.

    `extra` adds fields (a subscribe ack's `epoch`, and `recovered` for a resume).
    """
    body = _with_request_id({"type": "ack"}, request_id)
    body["topic"] = topic
    body["status"] = "ok"
    if seq is not None:
        body["seq"] = seq
    body.update(extra)
    return _frame(body)


def error(code: str, message: str, request_id: str | None = None) -> bytes:
    """Encode an `error` frame."""
    body = _with_request_id({"type": "error"}, request_id)
    body["error"] = {"code": code, "message": message}
    return _frame(body)


def pong(request_id: str | None) -> bytes:
    """Encode a `pong` frame."""
    return _frame(_with_request_id({"type": "pong"}, request_id))


def message(item: Event) -> dict:
    """Return a published message's shape: an event's `message`, an HTTP history item."""
    return {
        "id": item.id,
        "payload": orjson.Fragment(item.payload),
        "topic": item.topic,
        "timestamp": iso(item.timestamp),
        "seq": item.seq,
    }


def event(item: Event) -> bytes:
    """Encode an `event` frame for one published message."""
    return _frame({"type": "event", "topic": item.topic, "message": message(item)})


def heartbeat() -> bytes:
    """Encode the `info`/`ping` heartbeat frame."""
    return _frame({"type": "info", "msg": "ping"})


def topic_deleted(topic: str) -> bytes:
    """Encode the `info`/`topic_deleted` notice."""
    return _frame({"type": "info", "topic": topic, "msg": "topic_deleted"})


def access_revoked(topic: str) -> bytes:
    """Encode the `info`/`access_revoked` notice: no more events of `topic` will come."""
    return _frame({"type": "info", "topic": topic, "msg": "access_revoked"})


def dropped(topic: str, count: int, from_seq: int, to_seq: int) -> bytes:
    """Encode the `info`/`dropped` notice: `count` events of `topic`, seqs from..to, lost.

    A client can resume over the range with `since_seq = from_seq - 1`.
    """
    return _frame(
        {
            "type": "info",
            "msg": "dropped",
            "topic": topic,
            "count": count,
            "from_seq": from_seq,
            "to_seq": to_seq,
        }
    )


def shutdown() -> bytes:
    """Encode the `info`/`shutdown` notice sent before a 1001 close."""
    return _frame({"type": "info", "msg": "shutdown"})
