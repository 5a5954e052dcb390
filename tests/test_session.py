"""A session keeps the replay/live seam and the unsubscribe edge exact (docs/delivery.md)."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from orjson import dumps as enc
from wire_reader import WireReader

from gateway import protocol
from gateway.brokers import BrokerUnavailable, MemoryBroker
from gateway.brokers.contract import run_sends
from gateway.config import Rate
from gateway.transport import wsframes
from gateway.transport.outbox import Outbox
from gateway.transport.session import Session


@pytest.fixture
def setup():
    broker = MemoryBroker(1000, encode=lambda e: wsframes.text(protocol.event(e)))
    broker.create_topic("t")
    server, client = socket.socketpair()
    outbox = Outbox(server, "c1", queue_size=100_000, write_timeout=5)
    session = Session("c1", "u1", broker, outbox, max_json_depth=32)
    yield broker, session, WireReader(client)
    outbox.finish(2)
    server.close()
    client.close()


def send(session: Session, **frame) -> None:
    session.handle(json.dumps(frame))


def test_subscribe_during_concurrent_publishing_has_no_gap_or_duplicate(setup):
    broker, session, reader = setup
    for i in range(200):
        broker.publish("t", f"pre{i}", enc(i))
    stop = threading.Event()

    def publisher() -> None:
        i = 0
        while not stop.is_set() and i < 20_000:
            broker.publish("t", f"live{i}", enc(i))
            i += 1

    thread = threading.Thread(target=publisher)
    thread.start()
    send(session, type="subscribe", topic="t", last_n=50, request_id="s")
    stop.set()
    thread.join(10)
    last = broker.topics()[0].messages
    reader.read_until(
        lambda frames: reader.texts() and reader.texts()[-1].get("message", {}).get("seq") == last
    )
    bodies = reader.texts()
    assert bodies[0]["type"] == "ack" and bodies[0]["request_id"] == "s"
    seqs = [b["message"]["seq"] for b in bodies[1:]]
    assert seqs == list(range(seqs[0], last + 1))
    assert seqs[0] > 150  # at most last_n=50 replayed of the 200+ published before


def test_no_event_after_the_unsubscribe_ack(setup):
    broker, session, reader = setup
    send(session, type="subscribe", topic="t")
    broker.publish("t", "1", enc(None))
    send(session, type="unsubscribe", topic="t", request_id="u")
    broker.publish("t", "2", enc(None))
    send(session, type="ping", request_id="p")
    reader.read_until(lambda frames: len(frames) == 4)
    assert [b["type"] for b in reader.texts()] == ["ack", "event", "ack", "pong"]


def test_publish_acks_carry_seq_and_errors_keep_the_session(setup):
    broker, session, reader = setup
    send(session, type="publish", topic="t", message={"id": "m", "payload": 1}, request_id="p1")
    send(
        session, type="publish", topic="missing", message={"id": "m", "payload": 1}, request_id="p2"
    )
    session.handle("{not json")
    send(session, type="ping")
    reader.read_until(lambda frames: len(frames) == 4)
    ack, missing, bad, pong = reader.texts()
    assert (ack["type"], ack["seq"], ack["request_id"]) == ("ack", 1, "p1")
    assert missing["error"]["code"] == "TOPIC_NOT_FOUND" and missing["request_id"] == "p2"
    assert bad["error"]["code"] == "BAD_REQUEST"
    assert pong["type"] == "pong"


def test_topic_deletion_tells_the_subscriber(setup):
    broker, session, reader = setup
    send(session, type="subscribe", topic="t")
    broker.delete_topic("t")
    reader.read_until(lambda frames: len(frames) == 2)
    assert reader.texts()[1] == {
        **reader.texts()[1],
        "type": "info",
        "msg": "topic_deleted",
        "topic": "t",
    }


def nested(depth: int):
    """Return a JSON value `depth` containers deep: [[...[]...]]."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture
def limited():
    """A session with small limits: depth 8, 2 subscriptions, 3 publishes a minute."""
    broker = MemoryBroker(100, encode=lambda e: wsframes.text(protocol.event(e)))
    for name in ("a", "b", "c"):
        broker.create_topic(name)
    server, client = socket.socketpair()
    outbox = Outbox(server, "c2", queue_size=100, write_timeout=5)
    session = Session(
        "c2",
        "u2",
        broker,
        outbox,
        max_json_depth=8,
        max_subscriptions=2,
        publish_rate=Rate(3, "minute"),
    )
    yield broker, session, WireReader(client)
    outbox.finish(2)
    server.close()
    client.close()


def test_a_frame_deeper_than_the_limit_is_refused_before_a_seq_is_spent(limited):
    broker, session, reader = limited
    # The frame is two levels around its payload: payload depth 6 is frame depth 8.
    send(session, type="publish", topic="a", message={"id": "ok", "payload": nested(6)})
    send(
        session,
        type="publish",
        topic="a",
        message={"id": "deep", "payload": nested(7)},
        request_id="deep",
    )
    send(session, type="publish", topic="a", message={"id": "x", "payload": nested(253)})
    send(session, type="publish", topic="a", message={"id": "next", "payload": 1})
    reader.read_until(lambda frames: len(frames) == 4)
    ok, deep, deeper, following = reader.texts()
    assert (ok["type"], ok["seq"]) == ("ack", 1)
    assert deep["request_id"] == "deep"  # the reply names the frame it refuses
    for refused in (deep, deeper):
        assert refused["error"]["code"] == "BAD_REQUEST", refused
        assert "nested deeper than 8" in refused["error"]["message"]
    assert (following["type"], following["seq"]) == ("ack", 2)  # no seq lost in between
    assert [e.id for e in broker.history("a").events] == ["ok", "next"]


def test_publishes_past_the_rate_are_refused_and_cost_no_seq(limited):
    broker, session, reader = limited
    for n in range(5):
        send(session, type="publish", topic="a", message={"id": f"m{n}", "payload": n})
    reader.read_until(lambda frames: len(frames) == 5)
    replies = reader.texts()
    assert [r.get("seq") for r in replies[:3]] == [1, 2, 3]
    for refused in replies[3:]:
        assert refused["error"]["code"] == "RATE_LIMITED", refused
        assert "3/minute" in refused["error"]["message"]
    assert broker.topics()[0].messages == 3


def test_subscriptions_past_the_limit_are_refused(limited):
    broker, session, reader = limited
    for name in ("a", "b", "c", "a"):
        send(session, type="subscribe", topic=name, request_id=name)
    send(session, type="unsubscribe", topic="b")
    send(session, type="subscribe", topic="c", request_id="c2")
    reader.read_until(lambda frames: len(frames) == 6)
    a, b, c, again, _, c2 = reader.texts()
    assert [a["type"], b["type"], again["type"], c2["type"]] == ["ack"] * 4
    assert (c["error"]["code"], c["request_id"]) == ("LIMIT_EXCEEDED", "c")
    # A deleted topic frees its slot too.
    broker.delete_topic("a")
    send(session, type="subscribe", topic="b", request_id="b2")
    reader.read_until(lambda frames: len(frames) == 8)
    assert reader.texts()[-1]["type"] == "ack"


def test_a_fault_of_the_broker_is_an_internal_error_and_the_session_goes_on(setup):
    broker, session, reader = setup

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    broker.subscribe = broken
    send(session, type="subscribe", topic="t", request_id="s")
    send(session, type="ping", request_id="p")
    reader.read_until(lambda frames: len(frames) == 2)
    error, pong = reader.texts()
    assert (error["error"]["code"], error["request_id"]) == ("INTERNAL", "s")
    assert pong["type"] == "pong"


def test_a_second_subscribe_does_not_swallow_an_event_still_on_its_way(setup):
    # With Redis an event reaches the session late; a duplicate subscribe once held it and
    # then dropped it as if a replay (there is none) had covered it.
    broker, session, reader = setup
    late = broker.publish("t", "late", enc(1))  # not delivered yet: the session subscribes next
    send(session, type="subscribe", topic="t", request_id="s1")
    real_subscribe = broker.subscribe

    def subscribe_while_an_event_arrives(*args, **kwargs):
        subscription = real_subscribe(*args, **kwargs)
        # What the Redis listener hands over meanwhile (it runs the write the session returns).
        run_sends([send] if (send := session.deliver(late)) else [])
        return subscription

    broker.subscribe = subscribe_while_an_event_arrives
    send(session, type="subscribe", topic="t", request_id="s2")
    reader.read_until(lambda frames: len(frames) == 3)
    first, event, second = reader.texts()
    assert (first["request_id"], second["request_id"]) == ("s1", "s2")
    assert event["type"] == "event" and event["message"]["seq"] == late.seq


def test_events_delivered_while_subscribing_follow_the_replay_exactly_once(setup):
    # The seam, made to happen every time: events published after the broker's snapshot
    # but before the ack is queued are held, then sent after the replay; one the broker
    # hands over late although the replay covered it is not sent twice.
    broker, session, reader = setup
    for i in range(5):
        broker.publish("t", f"pre{i}", enc(i))
    real_subscribe = broker.subscribe
    held_seen = []

    def subscribe_while_publishing(*args, **kwargs):
        subscription = real_subscribe(*args, **kwargs)
        late_duplicate = broker.history("t").events[-1]  # seq 5, already in the replay
        assert session.deliver(late_duplicate) is None  # held: nothing to write yet
        for i in range(3):
            broker.publish("t", f"live{i}", enc(i))  # seqs 6-8, delivered into the hold
        held_seen.append([e.seq for e in session._holding._topics["t"]])
        return subscription

    broker.subscribe = subscribe_while_publishing
    send(session, type="subscribe", topic="t", last_n=2, request_id="s")
    reader.read_until(lambda frames: len(frames) == 6)
    ack, *events = reader.texts()
    assert ack["type"] == "ack" and ack["seq"] == 5
    assert held_seen == [[5, 6, 7, 8]]  # the seam was exercised
    assert [e["message"]["seq"] for e in events] == [4, 5, 6, 7, 8]


def test_no_socket_write_happens_under_the_broker_lock():
    # Real threads, as on the dev server: a subscriber whose socket write blocks must not
    # hold up a publish to another topic (the write once ran with the broker's lock held).
    broker = MemoryBroker(10, encode=lambda e: wsframes.text(protocol.event(e)))
    broker.create_topic("slow")
    broker.create_topic("fast")
    sockets = [socket.socketpair() for _ in range(2)]
    slow_out = Outbox(sockets[0][0], "slow", queue_size=10, write_timeout=5)
    fast_out = Outbox(sockets[1][0], "fast", queue_size=10, write_timeout=5)
    broker.subscribe("slow", Session("c-slow", "u", broker, slow_out, max_json_depth=32))
    fast = Session("c-fast", "u", broker, fast_out, max_json_depth=32)
    broker.subscribe("fast", fast)
    writing, release = threading.Event(), threading.Event()

    def blocking_send(data) -> int:
        writing.set()
        release.wait(10)
        return len(data)

    slow_out._sender.send_nowait = blocking_send
    stuck = threading.Thread(target=broker.publish, args=("slow", "m", enc(1)))
    stuck.start()
    try:
        assert writing.wait(5), "the slow subscriber's write never started"
        other = threading.Thread(target=broker.publish, args=("fast", "m", enc(2)))
        other.start()
        other.join(5)
        assert not other.is_alive(), "a publish to another topic waited for a socket write"
        reader = WireReader(sockets[1][1])
        reader.read_until(lambda frames: len(frames) == 1)
        assert reader.texts()[0]["message"]["seq"] == 1
    finally:
        release.set()
        stuck.join(5)
        for pair in sockets:
            for sock in pair:
                sock.close()


class _WatchedLock:
    """A lock that knows whether it is held (for the tests of the lock rule)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = False

    def __enter__(self):
        self._lock.acquire()
        self.held = True
        return self

    def __exit__(self, *exc) -> None:
        self.held = False
        self._lock.release()


def test_under_gevent_no_socket_write_happens_under_the_broker_lock():
    # gunicorn's worker: the first write of an event-loop tick goes out at once, but only
    # after the broker has released its lock, for every subscriber of the fan-out.
    import gevent
    import gevent.socket

    broker = MemoryBroker(10, encode=lambda e: wsframes.text(protocol.event(e)))
    broker._lock = lock = _WatchedLock()
    broker.create_topic("t")
    pairs = [gevent.socket.socketpair() for _ in range(3)]
    writes_under_lock, writes = [], []
    for index, (ours, _) in enumerate(pairs):
        outbox = Outbox(ours, f"c{index}", queue_size=10, write_timeout=5)
        real_send = outbox._sender.send_nowait

        def watched_send(data, real_send=real_send) -> int:
            (writes_under_lock if lock.held else writes).append(len(data))
            return real_send(data)

        outbox._sender.send_nowait = watched_send
        broker.subscribe("t", Session(f"c{index}", "u", broker, outbox, max_json_depth=32))
    try:
        gevent.spawn(broker.publish, "t", "m", enc(1)).join(5)
        assert writes_under_lock == []
        assert len(writes) == 3  # each subscriber's write went out in the same tick
        for _, theirs in pairs:
            reader = WireReader(theirs)
            reader.read_until(lambda frames: len(frames) == 1)
            assert reader.texts()[0]["message"]["seq"] == 1
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_one_read_of_frames_is_served_in_order_with_its_publishes_batched(limited):
    """What one socket read brings is handled together: replies keep the client's order."""
    broker, session, reader = limited
    calls = []
    publish_many = broker.publish_many
    broker.publish_many = lambda requests: calls.append(len(requests)) or publish_many(requests)

    def frame(**body) -> str:
        return json.dumps(body)

    session.handle_many(
        [
            frame(type="publish", topic="a", message={"id": "1", "payload": 1}, request_id="p1"),
            frame(type="publish", topic="nope", message={"id": "2", "payload": 2}, request_id="p2"),
            "{not json",
            frame(type="ping", request_id="ping"),
            frame(type="publish", topic="b", message={"id": "3", "payload": 3}, request_id="p3"),
            # The rate (3 a minute, refused ones count) is spent: refused, after the ack before.
            frame(type="publish", topic="a", message={"id": "4", "payload": 4}, request_id="p4"),
            frame(type="publish", topic="a", message={"id": "5", "payload": 5}, request_id="p5"),
        ]
    )
    reader.read_until(lambda frames: len(frames) == 7)
    replies = reader.texts()
    assert [(r["type"], r.get("request_id"), r.get("seq")) for r in replies] == [
        ("ack", "p1", 1),
        ("error", "p2", None),
        ("error", None, None),
        ("pong", "ping", None),
        ("ack", "p3", 1),
        ("error", "p4", None),
        ("error", "p5", None),
    ]
    assert replies[1]["error"]["code"] == "TOPIC_NOT_FOUND"
    assert {r["error"]["code"] for r in replies[5:]} == {"RATE_LIMITED"}
    assert calls == [2]  # p1 and p2 in one broker call; p3 alone takes the single path
    assert [e.id for e in broker.history("a").events] == ["1"]


def test_a_broker_outage_refuses_every_publish_of_a_batch(setup):
    broker, session, reader = setup

    def down(requests):
        raise BrokerUnavailable("redis: gone")

    broker.publish_many = down
    frames = [
        json.dumps(
            {
                "type": "publish",
                "topic": "t",
                "message": {"id": str(i), "payload": i},
                "request_id": str(i),
            }
        )
        for i in range(3)
    ]
    session.handle_many([*frames, json.dumps({"type": "ping", "request_id": "p"})])
    reader.read_until(lambda frames: len(frames) == 4)
    replies = reader.texts()
    assert [(r.get("error", {}).get("code"), r["request_id"]) for r in replies[:3]] == [
        ("INTERNAL", "0"),
        ("INTERNAL", "1"),
        ("INTERNAL", "2"),
    ]
    assert replies[3]["type"] == "pong"


def test_every_publish_of_a_batch_is_answered_when_the_admin_lookup_fails(setup):
    """A refusal asks the user store whether the user is an admin; if that fails, that
    publish gets INTERNAL and every other command still gets its own reply."""
    broker, session, reader = setup
    broker.create_topic("mine", owner="someone-else", publish="owner")

    class BrokenRoles:
        def is_admin(self, user: str) -> bool:
            raise RuntimeError("the user store is down")

    session._roles = BrokenRoles()

    def publish(topic: str, rid: str) -> str:
        message = {"id": rid, "payload": rid}
        return json.dumps(
            {"type": "publish", "topic": topic, "message": message, "request_id": rid}
        )

    session.handle_many([publish("t", "a"), publish("mine", "b"), publish("t", "c")])
    reader.read_until(lambda frames: len(frames) == 3)
    replies = reader.texts()
    assert [(r["type"], r["request_id"]) for r in replies] == [
        ("ack", "a"),
        ("error", "b"),
        ("ack", "c"),
    ]
    assert replies[1]["error"]["code"] == "INTERNAL"
    assert [e.id for e in broker.history("t").events] == ["a", "c"]
