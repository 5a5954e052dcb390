"""MemoryBroker: fan-out, order, replay seam, deletion and cleanup (SPEC §5)."""

from __future__ import annotations

import threading

import gevent
import pytest

from gateway.broker import Event, TopicExists, TopicNotFound
from gateway.broker_memory import MemoryBroker


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


def test_fan_out_reaches_every_subscriber_once_in_order(broker):
    broker.create_topic("t")
    subscribers = [Recorder() for _ in range(3)]
    for s in subscribers:
        broker.subscribe("t", s)
    for i in range(10):
        broker.publish("t", f"m{i}", {"i": i})
    for s in subscribers:
        assert s.seqs() == list(range(1, 11))
        assert [e.payload["i"] for e in s.events] == list(range(10))


def test_events_are_encoded_once_per_publish():
    calls = []
    broker = MemoryBroker(5, encode=lambda e: calls.append(e.seq) or b"frame")
    broker.create_topic("t")
    subscribers = [Recorder() for _ in range(4)]
    for s in subscribers:
        broker.subscribe("t", s)
    event = broker.publish("t", "m", None)
    assert calls == [1]
    assert all(s.events[0] is event and s.events[0].wire == b"frame" for s in subscribers)


def test_isolation_between_topics(broker):
    broker.create_topic("a")
    broker.create_topic("b")
    on_a, on_b = Recorder(), Recorder()
    broker.subscribe("a", on_a)
    broker.subscribe("b", on_b)
    broker.publish("a", "1", None)
    assert on_a.seqs() == [1] and on_b.events == []


def test_replay_returns_the_last_n_and_live_follows_without_gap(broker):
    broker.create_topic("t")
    for i in range(8):
        broker.publish("t", str(i), i)
    late = Recorder()
    subscription = broker.subscribe("t", late, last_n=3)
    assert [e.seq for e in subscription.replay] == [6, 7, 8]
    assert subscription.seq == 8
    broker.publish("t", "x", None)
    assert late.seqs() == [9]


def test_replay_larger_than_history_returns_all_the_ring_keeps(broker):
    broker.create_topic("t")
    for i in range(8):
        broker.publish("t", str(i), i)
    assert [e.seq for e in broker.subscribe("t", Recorder(), last_n=50).replay] == [4, 5, 6, 7, 8]


def test_subscribing_twice_keeps_one_subscription_and_replays_nothing(broker):
    broker.create_topic("t")
    broker.publish("t", "1", None)
    s = Recorder()
    assert len(broker.subscribe("t", s, last_n=5).replay) == 1
    assert broker.subscribe("t", s, last_n=5).replay == []
    broker.publish("t", "2", None)
    assert s.seqs() == [2]
    assert broker.subscriber_count() == 1


def test_unknown_topics_raise(broker):
    with pytest.raises(TopicNotFound):
        broker.publish("nope", "1", None)
    with pytest.raises(TopicNotFound):
        broker.subscribe("nope", Recorder())
    with pytest.raises(TopicNotFound):
        broker.unsubscribe("nope", Recorder())
    with pytest.raises(TopicNotFound):
        broker.delete_topic("nope")


def test_create_twice_raises(broker):
    broker.create_topic("t")
    with pytest.raises(TopicExists):
        broker.create_topic("t")


def test_unsubscribe_stops_delivery_and_is_idempotent(broker):
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    broker.unsubscribe("t", s)
    broker.unsubscribe("t", s)
    broker.publish("t", "1", None)
    assert s.events == [] and broker.subscriber_count() == 0


def test_delete_notifies_and_recreate_starts_fresh(broker):
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    broker.publish("t", "1", None)
    broker.delete_topic("t")
    assert s.deleted == ["t"]
    assert broker.subscriber_count() == 0
    with pytest.raises(TopicNotFound):
        broker.publish("t", "2", None)
    broker.create_topic("t")
    assert broker.topics()[0].messages == 0
    assert broker.subscribe("t", Recorder(), last_n=10).replay == []
    assert broker.publish("t", "3", None).seq == 1
    assert s.seqs() == [1]  # the old subscription did not carry over


def test_message_counts_are_not_capped_by_the_ring(broker):
    broker.create_topic("t")
    for i in range(12):
        broker.publish("t", str(i), None)
    (info,) = broker.topics()
    assert (info.name, info.messages, info.subscribers) == ("t", 12, 0)


def test_unsubscribe_all_removes_every_subscription(broker):
    for name in ("a", "b", "c"):
        broker.create_topic(name)
    s, other = Recorder(), Recorder()
    for name in ("a", "b", "c"):
        broker.subscribe(name, s)
    broker.subscribe("a", other)
    broker.unsubscribe_all(s)
    assert broker.subscriber_count() == 1
    assert {t.name: t.subscribers for t in broker.topics()} == {"a": 1, "b": 0, "c": 0}


def test_concurrent_greenlets_leave_no_subscription_behind(broker):
    broker.create_topic("t")
    received: list[Recorder] = []

    def client(i: int) -> None:
        s = Recorder()
        received.append(s)
        broker.subscribe("t", s)
        gevent.sleep(0)
        broker.publish("t", f"m{i}", i)
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
            broker.publish("t", f"{n}-{i}", None)

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for s in subscribers:
        assert s.seqs() == list(range(1, 2001))
