"""MemoryBroker: the whole broker in one process, behind one lock (the embedded default)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from gateway.broker import (
    Broker,
    Encoder,
    Event,
    Subscriber,
    Subscription,
    TopicExists,
    TopicInfo,
    TopicNotFound,
)


class _Topic:
    """One topic's state: history ring, last seq, message count and subscribers."""

    __slots__ = ("name", "ring", "seq", "subscribers")

    def __init__(self, name: str, ring_size: int) -> None:
        self.name = name
        self.ring: deque[Event] = deque(maxlen=ring_size)
        self.seq = 0
        # A dict keeps subscription order and gives O(1) add/remove.
        self.subscribers: dict[Subscriber, None] = {}


class MemoryBroker(Broker):
    """A lock-protected in-process broker.

    Fan-out happens under the lock on purpose: delivering is a non-blocking append to each
    subscriber's own queue, and doing it there is what makes queue order equal seq order when
    two publishers race (real threads on the dev server, greenlets under gunicorn).
    """

    def __init__(self, ring_size: int, encode: Encoder) -> None:
        self._ring_size = ring_size
        self._encode = encode
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._by_subscriber: dict[Subscriber, set[str]] = {}

    def create_topic(self, name: str) -> None:
        with self._lock:
            if name in self._topics:
                raise TopicExists(name)
            self._topics[name] = _Topic(name, self._ring_size)

    def delete_topic(self, name: str) -> None:
        with self._lock:
            topic = self._topics.pop(name, None)
            if topic is None:
                raise TopicNotFound(name)
            for subscriber in topic.subscribers:
                self._forget(subscriber, name)
                subscriber.topic_deleted(name)

    def topics(self) -> list[TopicInfo]:
        with self._lock:
            return [
                TopicInfo(t.name, len(t.subscribers), t.seq)
                for t in sorted(self._topics.values(), key=lambda t: t.name)
            ]

    def publish(self, topic: str, message_id: str, payload: Any) -> Event:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            state.seq += 1
            event = Event(topic, message_id, payload, state.seq, time.time())
            event.wire = self._encode(event)
            state.ring.append(event)
            for subscriber in state.subscribers:
                subscriber.deliver(event)
            return event

    def subscribe(self, topic: str, subscriber: Subscriber, last_n: int = 0) -> Subscription:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            if subscriber in state.subscribers:
                return Subscription([], state.seq)
            state.subscribers[subscriber] = None
            self._by_subscriber.setdefault(subscriber, set()).add(topic)
            replay = list(state.ring)[-last_n:] if last_n else []
            return Subscription(replay, state.seq)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            if subscriber in state.subscribers:
                del state.subscribers[subscriber]
                self._forget(subscriber, topic)

    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        with self._lock:
            for name in self._by_subscriber.pop(subscriber, ()):
                state = self._topics.get(name)
                if state is not None:
                    state.subscribers.pop(subscriber, None)

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(t.subscribers) for t in self._topics.values())

    def _forget(self, subscriber: Subscriber, topic: str) -> None:
        topics = self._by_subscriber.get(subscriber)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self._by_subscriber[subscriber]
