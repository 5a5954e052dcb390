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
from gateway.fanout import Fanout


class _Topic:
    """One topic's history ring and last seq (which is also its message count)."""

    __slots__ = ("ring", "seq")

    def __init__(self, ring_size: int) -> None:
        self.ring: deque[Event] = deque(maxlen=ring_size)
        self.seq = 0


class MemoryBroker(Broker):
    """A lock-protected in-process broker.

    Fan-out happens under the lock on purpose: delivering is a non-blocking append to each
    subscriber's own queue, and doing it there is what makes queue order equal seq order when
    two publishers race (real threads on the dev server, greenlets under gunicorn). For the
    same reason registering a subscriber and snapshotting its replay are one atomic step.
    """

    def __init__(self, ring_size: int, encode: Encoder) -> None:
        self._ring_size = ring_size
        self._encode = encode
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._fanout = Fanout()

    def create_topic(self, name: str) -> None:
        with self._lock:
            if name in self._topics:
                raise TopicExists(name)
            self._topics[name] = _Topic(self._ring_size)

    def delete_topic(self, name: str) -> None:
        with self._lock:
            if self._topics.pop(name, None) is None:
                raise TopicNotFound(name)
            self._fanout.drop_topic(name)

    def topics(self) -> list[TopicInfo]:
        with self._lock:
            return [
                TopicInfo(name, self._fanout.count(name), topic.seq)
                for name, topic in sorted(self._topics.items())
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
            self._fanout.deliver(event)
            return event

    def subscribe(self, topic: str, subscriber: Subscriber, last_n: int = 0) -> Subscription:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            if not self._fanout.add(topic, subscriber):
                return Subscription([], state.seq)
            replay = list(state.ring)[-last_n:] if last_n else []
            return Subscription(replay, state.seq)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        with self._lock:
            if topic not in self._topics:
                raise TopicNotFound(topic)
            self._fanout.remove(topic, subscriber)

    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._fanout.remove_all(subscriber)

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(self._fanout.counts().values())
