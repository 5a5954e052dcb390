"""MemoryBroker: the whole broker in one process, behind one lock (the embedded default)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

from gateway.broker import (
    IDEMPOTENCY_SECONDS,
    Broker,
    Encoder,
    Event,
    History,
    Subscriber,
    Subscription,
    TopicExists,
    TopicInfo,
    TopicNotFound,
    resume,
)
from gateway.fanout import Fanout

# Idempotency keys kept per topic at most, whatever their age: memory stays bounded.
_MAX_KEYS = 100_000


class _Topic:
    """One topic's ring, last seq (also its message count), epoch and idempotency keys."""

    __slots__ = ("epoch", "keys", "ring", "seq")

    def __init__(self, ring_size: int) -> None:
        self.ring: deque[Event] = deque(maxlen=ring_size)
        self.seq = 0
        # A new id per creation, and so per process: a restart starts new streams.
        self.epoch = uuid.uuid4().hex[:16]
        # Idempotency key -> (first event, expiry); oldest first, pruned as publishes pass.
        self.keys: OrderedDict[str, tuple[Event, float]] = OrderedDict()

    def remembered(self, key: str, now: float) -> Event | None:
        """Forget expired keys; return the event first published under `key`, if any."""
        while self.keys:
            oldest, (_, expiry) = next(iter(self.keys.items()))
            if expiry > now and len(self.keys) <= _MAX_KEYS:
                break
            del self.keys[oldest]
        hit = self.keys.get(key)
        return hit[0] if hit else None


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

    def publish(
        self, topic: str, message_id: str, payload: Any, idempotency_key: str | None = None
    ) -> Event:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            now = time.time()
            if idempotency_key is not None:
                first = state.remembered(idempotency_key, now)
                if first is not None:
                    return first
            state.seq += 1
            event = Event(topic, message_id, payload, state.seq, now)
            event.wire = self._encode(event)
            state.ring.append(event)
            if idempotency_key is not None:
                state.keys[idempotency_key] = (event, now + IDEMPOTENCY_SECONDS)
            self._fanout.deliver(event)
            return event

    def subscribe(
        self,
        topic: str,
        subscriber: Subscriber,
        last_n: int = 0,
        since_seq: int | None = None,
        epoch: str | None = None,
    ) -> Subscription:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            if not self._fanout.add(topic, subscriber):
                return Subscription([], state.seq, state.epoch, since_seq is not None)
            if since_seq is not None:
                same = epoch is None or epoch == state.epoch
                replay, recovered = resume(list(state.ring), since_seq, state.seq, same)
                return Subscription(replay, state.seq, state.epoch, recovered)
            replay = list(state.ring)[-last_n:] if last_n else []
            return Subscription(replay, state.seq, state.epoch)

    def history(
        self, topic: str, since_seq: int = 0, limit: int = 100, epoch: str | None = None
    ) -> History:
        with self._lock:
            state = self._topics.get(topic)
            if state is None:
                raise TopicNotFound(topic)
            same = epoch is None or epoch == state.epoch
            events, complete = resume(list(state.ring), since_seq, state.seq, same)
            return History(events[:limit], state.seq, state.epoch, complete)

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
