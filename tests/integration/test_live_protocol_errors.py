"""Every row of docs/protocol.md against the real server; after each error the socket still works."""

from __future__ import annotations

import pytest
from harness import TS_RE, check_event, create_topic, stats_topic, unique, ws_connect


@pytest.fixture(scope="module")
def topic(gw, token):
    return create_topic(gw, token)


def pub(topic, message, **extra):
    return {"type": "publish", "topic": topic, "message": message, "request_id": "rq", **extra}


def sub(topic, **extra):
    return {"type": "subscribe", "topic": topic, "request_id": "rq", **extra}


# (case id, frame builder taking the existing topic, expected code, echoed request_id or None)
BAD_INPUT = [
    ("not-json", lambda t: "{oops", "BAD_REQUEST", None),
    ("empty-text", lambda t: "", "BAD_REQUEST", None),
    ("json-array", lambda t: '[{"type": "ping"}]', "BAD_REQUEST", None),
    ("json-string", lambda t: '"ping"', "BAD_REQUEST", None),
    ("json-number", lambda t: "42", "BAD_REQUEST", None),
    ("json-null", lambda t: "null", "BAD_REQUEST", None),
    ("binary-frame", lambda t: b'{"type": "ping", "request_id": "rq"}', "BAD_REQUEST", None),
    ("missing-type", lambda t: {"topic": t, "request_id": "rq"}, "BAD_REQUEST", "rq"),
    (
        "unknown-type",
        lambda t: {"type": "dance", "topic": t, "request_id": "rq"},
        "BAD_REQUEST",
        "rq",
    ),
    ("type-not-string", lambda t: {"type": 7, "request_id": "rq"}, "BAD_REQUEST", "rq"),
    (
        "subscribe-missing-topic",
        lambda t: {"type": "subscribe", "request_id": "rq"},
        "BAD_REQUEST",
        "rq",
    ),
    (
        "unsubscribe-missing-topic",
        lambda t: {"type": "unsubscribe", "request_id": "rq"},
        "BAD_REQUEST",
        "rq",
    ),
    (
        "publish-missing-topic",
        lambda t: {"type": "publish", "request_id": "rq", "message": {"id": "m", "payload": 1}},
        "BAD_REQUEST",
        "rq",
    ),
    ("topic-not-string", lambda t: sub(123), "BAD_REQUEST", "rq"),
    (
        "message-missing",
        lambda t: {"type": "publish", "topic": t, "request_id": "rq"},
        "BAD_REQUEST",
        "rq",
    ),
    ("message-string", lambda t: pub(t, "hello"), "BAD_REQUEST", "rq"),
    ("message-array", lambda t: pub(t, [{"id": "m", "payload": 1}]), "BAD_REQUEST", "rq"),
    ("message-null", lambda t: pub(t, None), "BAD_REQUEST", "rq"),
    ("message-id-missing", lambda t: pub(t, {"payload": 1}), "BAD_REQUEST", "rq"),
    ("message-id-empty", lambda t: pub(t, {"id": "", "payload": 1}), "BAD_REQUEST", "rq"),
    ("message-id-int", lambda t: pub(t, {"id": 5, "payload": 1}), "BAD_REQUEST", "rq"),
    ("message-id-null", lambda t: pub(t, {"id": None, "payload": 1}), "BAD_REQUEST", "rq"),
    ("last_n-negative", lambda t: sub(t, last_n=-1), "BAD_REQUEST", "rq"),
    ("last_n-string", lambda t: sub(t, last_n="3"), "BAD_REQUEST", "rq"),
    ("last_n-float", lambda t: sub(t, last_n=2.5), "BAD_REQUEST", "rq"),
    ("last_n-bool", lambda t: sub(t, last_n=True), "BAD_REQUEST", "rq"),
    ("request_id-int", lambda t: {"type": "ping", "request_id": 5}, "BAD_REQUEST", None),
    (
        "request_id-object",
        lambda t: {"type": "subscribe", "topic": t, "request_id": {"a": 1}},
        "BAD_REQUEST",
        None,
    ),
    ("client_id-int", lambda t: sub(t, client_id=5), "BAD_REQUEST", "rq"),
    (
        "client_id-list",
        lambda t: pub(t, {"id": "m", "payload": 1}, client_id=["x"]),
        "BAD_REQUEST",
        "rq",
    ),
    ("subscribe-unknown-topic", lambda t: sub(unique("nope")), "TOPIC_NOT_FOUND", "rq"),
    (
        "unsubscribe-unknown-topic",
        lambda t: {"type": "unsubscribe", "topic": unique("nope"), "request_id": "rq"},
        "TOPIC_NOT_FOUND",
        "rq",
    ),
    (
        "publish-unknown-topic",
        lambda t: pub(unique("nope"), {"id": "m", "payload": 1}),
        "TOPIC_NOT_FOUND",
        "rq",
    ),
]


def assert_error(frame: dict, code: str, request_id: str | None) -> None:
    assert frame["type"] == "error", f"expected error {code}, got {frame}"
    assert frame["error"]["code"] == code, frame
    assert isinstance(frame["error"]["message"], str) and frame["error"]["message"], frame
    assert TS_RE.match(frame["ts"]), frame
    if request_id is not None:
        assert frame.get("request_id") == request_id, f"request_id not echoed: {frame}"


@pytest.mark.parametrize(
    "build,code,rid", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_gets_error_and_connection_survives(gw, token, topic, build, code, rid):
    with ws_connect(gw, token) as ws:
        ws.send(build(topic))
        assert_error(ws.recv(), code, rid)
        ws.ping()
        assert ws.barrier() == [], "one bad frame must produce exactly one error"
        # ...and the connection still does real work afterwards.
        ws.subscribe(topic)
        ws.unsubscribe(topic)


def test_publish_never_creates_topics(gw, token):
    missing = unique("ghost")
    with ws_connect(gw, token) as ws:
        ws.send(pub(missing, {"id": "m", "payload": 1}))
        assert_error(ws.recv(), "TOPIC_NOT_FOUND", "rq")
    assert stats_topic(gw, missing) is None


def test_double_subscribe_is_one_subscription_without_second_replay(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as ws, ws_connect(gw, token) as publisher:
        publisher.publish(topic, "a")
        publisher.publish(topic, "b")
        ws.subscribe(topic, last_n=5)
        assert [check_event(f, topic)["seq"] for f in ws.events(2)] == [1, 2]
        ack = ws.call({"type": "subscribe", "topic": topic, "last_n": 5})
        assert ack["type"] == "ack" and ack["status"] == "ok" and ack["topic"] == topic, ack
        assert ws.barrier() == [], "second subscribe replayed history again"
        assert stats_topic(gw, topic)["subscribers"] == 1

        publisher.publish(topic, "c")
        check_event(ws.recv(), topic, seq=3)
        assert ws.barrier() + ws.quiet() == [], "one publish delivered more than once"


def test_unsubscribe_when_not_subscribed_is_acked(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as ws:
        ack = ws.call({"type": "unsubscribe", "topic": topic})
        assert ack["type"] == "ack" and ack["status"] == "ok" and ack["topic"] == topic, ack
        ws.ping()


def test_no_event_after_unsubscribe_ack(gw, token):
    topic, other = create_topic(gw, token), create_topic(gw, token)
    with ws_connect(gw, token) as ws, ws_connect(gw, token) as publisher:
        ws.subscribe(topic)
        publisher.publish(topic, 1)
        check_event(ws.recv(), topic, seq=1)
        publisher.publish(other, "not for you")
        ws.unsubscribe(topic)
        publisher.publish(topic, 2)
        assert ws.barrier() + ws.quiet() == [], "event after unsubscribe or from another topic"
        assert stats_topic(gw, topic)["subscribers"] == 0


def test_last_n_larger_than_history_replays_everything_oldest_first(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as publisher:
        sent = [publisher.publish(topic, {"n": i}, msg_id=f"id-{i}")["seq"] for i in range(3)]
    assert sent == [1, 2, 3]
    with ws_connect(gw, token) as ws:
        ws.subscribe(topic, last_n=1000)
        msgs = [check_event(f, topic) for f in ws.events(3)]
        assert [(m["seq"], m["id"], m["payload"]) for m in msgs] == [
            (1, "id-0", {"n": 0}),
            (2, "id-1", {"n": 1}),
            (3, "id-2", {"n": 2}),
        ]
        assert ws.barrier() == []


def test_last_n_zero_and_absent_replay_nothing(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as publisher:
        publisher.publish(topic, "old")
    with ws_connect(gw, token) as a, ws_connect(gw, token) as b:
        a.subscribe(topic, last_n=0)
        b.subscribe(topic)
        assert a.barrier() == [] and b.barrier() == []


def test_unknown_fields_and_string_ids_are_accepted(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as ws:
        ack = ws.call({"type": "subscribe", "topic": topic, "client_id": "tab-1", "color": "blue"})
        assert ack["type"] == "ack", ack
        ack = ws.call(
            {
                "type": "publish",
                "topic": topic,
                "client_id": "tab-1",
                "extra": [1],
                "message": {
                    "id": "550e8400-e29b-41d4-a716-446655440000",
                    "payload": None,
                    "note": "ignored",
                },
            }
        )
        assert ack["type"] == "ack" and ack["seq"] == 1, ack
        msg = check_event(ws.recv(), topic, seq=1)
        assert msg["payload"] is None and msg["id"] == "550e8400-e29b-41d4-a716-446655440000"
