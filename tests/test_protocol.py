"""The WebSocket frame codec (docs/protocol.md)."""

from __future__ import annotations

import json
import re

import pytest

from gateway import protocol
from gateway.brokers import Event
from gateway.brokers.redis import scripts
from gateway.protocol import BAD_REQUEST, ProtocolError
from gateway.transport import wsframes

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def decode(frame) -> protocol.Command:
    text = json.dumps(frame) if not isinstance(frame, str | bytes) else frame
    return protocol.decode(text, max_depth=32)


def test_decodes_every_command():
    assert decode({"type": "ping", "request_id": "r"}) == protocol.Ping("r")
    assert decode({"type": "subscribe", "topic": "t", "last_n": 3, "client_id": "c"}) == (
        protocol.Subscribe("t", 3, None, "c")
    )
    assert decode({"type": "unsubscribe", "topic": "t"}) == protocol.Unsubscribe("t", None)
    publish = decode({"type": "publish", "topic": "t", "message": {"id": "m", "payload": [1]}})
    assert publish == protocol.Publish("t", "m", [1], None)
    # Encoded once, before the broker gives it a seq: what the broker stores and sends on.
    assert protocol.encode_payload(publish.payload) == b"[1]"


def test_subscribe_resume_fields():
    command = decode({"type": "subscribe", "topic": "t", "since_seq": 0, "epoch": "e1"})
    assert (command.since_seq, command.epoch, command.last_n) == (0, "e1", 0)
    assert decode({"type": "subscribe", "topic": "t", "last_n": 2}).since_seq is None


def test_unknown_fields_are_ignored():
    assert decode({"type": "ping", "extra": {"x": 1}}) == protocol.Ping(None)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '"text"',
        b"\x00binary",
        {},
        {"type": "nope"},
        {"type": 5},
        {"type": "subscribe"},
        {"type": "subscribe", "topic": ""},
        {"type": "subscribe", "topic": 7},
        {"type": "subscribe", "topic": "t", "last_n": -1},
        {"type": "subscribe", "topic": "t", "last_n": "3"},
        {"type": "subscribe", "topic": "t", "last_n": 1.5},
        {"type": "subscribe", "topic": "t", "last_n": True},
        {"type": "subscribe", "topic": "t", "client_id": 9},
        {"type": "publish", "topic": "t"},
        {"type": "publish", "topic": "t", "message": "hi"},
        {"type": "publish", "topic": "t", "message": {"payload": 1}},
        {"type": "publish", "topic": "t", "message": {"id": "", "payload": 1}},
        {"type": "publish", "topic": "t", "message": {"id": 3, "payload": 1}},
        {"type": "ping", "request_id": 12},
        {"type": "subscribe", "topic": "t", "since_seq": -1},
        {"type": "subscribe", "topic": "t", "since_seq": "4"},
        {"type": "subscribe", "topic": "t", "since_seq": 3, "last_n": 2},
        {"type": "subscribe", "topic": "t", "since_seq": 3, "epoch": 7},
    ],
)
def test_bad_frames_are_bad_requests(frame):
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == BAD_REQUEST
    assert info.value.message


def test_errors_echo_the_request_id():
    with pytest.raises(ProtocolError) as info:
        decode({"type": "bogus", "request_id": "r9"})
    assert info.value.request_id == "r9"


def test_event_frame_shape():
    body = json.loads(protocol.event(Event("orders", "m1", b'{"a":1}', 42, 0.5)))
    assert body["type"] == "event" and body["topic"] == "orders"
    assert body["message"] == {
        "id": "m1",
        "payload": {"a": 1},
        "topic": "orders",
        "timestamp": "1970-01-01T00:00:00.500Z",
        "seq": 42,
    }
    assert ISO.fullmatch(body["ts"])


def test_reply_frames_carry_ts_and_request_id():
    ack = json.loads(protocol.ack("t", "r1", seq=7))
    assert ack == {
        "type": "ack",
        "request_id": "r1",
        "topic": "t",
        "status": "ok",
        "seq": 7,
        "ts": ack["ts"],
    }
    error = json.loads(protocol.error("TOPIC_NOT_FOUND", "gone", "r2"))
    assert error["error"] == {"code": "TOPIC_NOT_FOUND", "message": "gone"}
    assert error["request_id"] == "r2"
    assert "request_id" not in json.loads(protocol.pong(None))
    dropped = json.loads(protocol.dropped("t", 4, 10, 13))
    assert (dropped["msg"], dropped["topic"], dropped["count"]) == ("dropped", "t", 4)
    assert (dropped["from_seq"], dropped["to_seq"]) == (10, 13)
    for frame in (protocol.heartbeat(), protocol.shutdown(), protocol.topic_deleted("t")):
        assert ISO.fullmatch(json.loads(frame)["ts"])


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frames_parse_with_wsproto(size):
    from wsproto.frame_protocol import FrameProtocol, Opcode

    payload = b"x" * size
    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(wsframes.text(payload))
    (frame,) = list(parser.received_frames())
    assert frame.opcode is Opcode.TEXT and frame.payload == payload.decode()
    assert frame.frame_finished and frame.message_finished


def test_close_frame_carries_code_and_reason():
    from wsproto.frame_protocol import FrameProtocol, Opcode

    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(wsframes.close(4008, "slow consumer"))
    (frame,) = list(parser.received_frames())
    assert frame.opcode is Opcode.CLOSE
    assert frame.payload == (4008, "slow consumer")


def test_stored_messages_round_trip_without_parsing_the_payload():
    packed = scripts.pack_message("m\n1", b'{"a":[1,"\\n"]}', 12.5)
    assert scripts.unpack_message(packed) == ("m\n1", b'{"a":[1,"\\n"]}', 12.5)


def test_messages_stored_by_an_older_gateway_still_read():
    legacy = b'{"id":"m1","payload":{"a":1},"timestamp":3.0}'
    assert scripts.unpack_message(legacy) == ("m1", b'{"a":1}', 3.0)


def test_the_bracket_count_shortcut_never_clears_a_deep_document():
    from gateway import jsondoc

    deep = "[" * 40 + "]" * 40
    assert jsondoc.depth_exceeds(json.loads(deep), 32, deep)
    # Brackets inside strings only make the count larger: then the walk decides.
    shallow = json.dumps({"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})
    assert not jsondoc.depth_exceeds(json.loads(shallow), 32, shallow)
    assert not jsondoc.depth_exceeds(json.loads(shallow), 32, shallow.encode())
