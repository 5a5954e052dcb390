"""MemoryBroker specifics; the behaviour every broker shares is in test_broker_contract.py."""

from __future__ import annotations

import threading

import gevent
import pytest
from orjson import dumps as enc

from gateway.brokers import Event, MemoryBroker


class Recorder:
    """A Subscriber that remembers what the broker handed it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.deleted: list[str] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def topic_deleted(self, topic: str) -> None:
        self.deleted.append(topic)

    def seqs(self, topic: str | None = None) -> list[int]:
        return [e.seq for e in self.events if topic is None or e.topic == topic]


@pytest.fixture
def broker():
    return MemoryBroker(ring_size=5, encode=lambda e: f"{e.topic}:{e.seq}".encode())


def test_events_are_encoded_once_per_publish():
    calls = []
    broker = MemoryBroker(5, encode=lambda e: calls.append(e.seq) or b"frame")
    broker.create_topic("t")
    subscribers = [Recorder() for _ in range(4)]
    for s in subscribers:
        broker.subscribe("t", s)
    event = broker.publish("t", "m", enc(None))
    assert calls == [1]
    assert all(s.events[0] is event and s.events[0].wire == b"frame" for s in subscribers)


def test_concurrent_greenlets_leave_no_subscription_behind(broker):
    broker.create_topic("t")
    received: list[Recorder] = []

    def client(i: int) -> None:
        s = Recorder()
        received.append(s)
        broker.subscribe("t", s)
        gevent.sleep(0)
        broker.publish("t", f"m{i}", enc(i))
        gevent.sleep(0)
        broker.unsubscribe_all(s)

    gevent.joinall([gevent.spawn(client, i) for i in range(200)], timeout=10, raise_error=True)
    assert broker.subscriber_count() == 0
    assert broker.topics()[0].messages == 200
    for s in received:
        assert s.seqs() == sorted(s.seqs())


def test_concurrent_threads_see_one_order(broker):
    """Publishers in real threads (the dev server's model): every subscriber sees seq order."""
    broker.create_topic("t")
    subscribers = [Recorder() for _ in range(5)]
    for s in subscribers:
        broker.subscribe("t", s)

    def publish_many(n: int) -> None:
        for i in range(500):
            broker.publish("t", f"{n}-{i}", enc(None))

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for s in subscribers:
        assert s.seqs() == list(range(1, 2001))
