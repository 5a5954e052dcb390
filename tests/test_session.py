"""A session keeps the replay/live seam and the unsubscribe edge exact (SPEC §5.2, §5.5)."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from orjson import dumps as enc
from wire_reader import WireReader

from gateway import protocol, wsframes
from gateway.broker_memory import MemoryBroker
from gateway.outbox import Outbox
from gateway.session import Session


@pytest.fixture
def setup():
    broker = MemoryBroker(1000, encode=lambda e: wsframes.text(protocol.event(e)))
    broker.create_topic("t")
    server, client = socket.socketpair()
    outbox = Outbox(server, "c1", queue_size=100_000, write_timeout=5)
    session = Session("c1", "u1", broker, outbox)
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
