"""Local fan-out: which subscribers of this process follow which topic, and delivery to them.

Shared by every broker (python-socketio's managers are the model): the memory broker calls
it under its own lock right after assigning a seq; the Redis broker calls it from its
listener as events arrive from Redis. Not thread-safe by itself: callers hold their lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.brokers.contract import Event, Subscriber

log = logging.getLogger("gateway.broker")


class Fanout:
    """Subscriptions of local subscribers, each with a seq floor below which it gets nothing.

    The floor is the seq a subscriber's replay ran up to: an event at or below it was
    already replayed (a transport may deliver it late), so it is skipped, never doubled.
    """

    def __init__(self) -> None:
        self._topics: dict[str, dict[Subscriber, int]] = {}
        self._by_subscriber: dict[Subscriber, set[str]] = {}
        # Events handed to subscribers since `take_delivered` last read it.
        self._delivered = 0

    def add(self, topic: str, subscriber: Subscriber, floor: int = 0) -> bool:
        """Subscribe; False (and nothing changes) if already subscribed."""
        subscribers = self._topics.setdefault(topic, {})
        if subscriber in subscribers:
            return False
        subscribers[subscriber] = floor
        self._by_subscriber.setdefault(subscriber, set()).add(topic)
        return True

    def set_floor(self, topic: str, subscriber: Subscriber, floor: int) -> None:
        """Skip this subscriber's events of `topic` up to seq `floor`."""
        subscribers = self._topics.get(topic)
        if subscribers is not None and subscriber in subscribers:
            subscribers[subscriber] = floor

    def remove(self, topic: str, subscriber: Subscriber) -> bool:
        """Unsubscribe; False if it was not subscribed."""
        subscribers = self._topics.get(topic)
        if subscribers is None or subscriber not in subscribers:
            return False
        del subscribers[subscriber]
        if not subscribers:
            del self._topics[topic]
        self._forget(subscriber, topic)
        return True

    def remove_all(self, subscriber: Subscriber) -> list[str]:
        """Drop every subscription of a subscriber; return the topics it left."""
        topics = self._by_subscriber.pop(subscriber, set())
        for topic in topics:
            subscribers = self._topics.get(topic)
            if subscribers is not None:
                subscribers.pop(subscriber, None)
                if not subscribers:
                    del self._topics[topic]
        return sorted(topics)

    def revoke(self, topic: str, user: str) -> list[Callable[[], None]]:
        """End every subscription of `user` to `topic`, telling each subscriber once."""
        sends = []
        subscribers = self._topics.get(topic)
        if not subscribers:
            return sends
        for subscriber in [s for s in subscribers if s.user_id == user]:
            self.remove(topic, subscriber)
            send = subscriber.access_revoked(topic)
            if send is not None:
                sends.append(send)
        return sends

    def drop_topic(self, topic: str) -> list[Callable[[], None]]:
        """Forget a deleted topic, telling each of its subscribers once; return their sends."""
        sends = []
        for subscriber in self._topics.pop(topic, {}):
            self._forget(subscriber, topic)
            send = subscriber.topic_deleted(topic)
            if send is not None:
                sends.append(send)
        return sends

    def deliver(self, event: Event) -> list[Callable[[], None]]:
        """Hand an event to every local subscriber of its topic above its floor.

        Return the socket writes they handed back, for the caller to run once it has
        released its lock (`run_sends`).
        """
        sends = []
        subscribers = self._topics.get(event.topic)
        if subscribers:
            seq = event.seq
            missed = 0  # counted in the rare branches only: nothing per delivery
            for subscriber, floor in subscribers.items():
                if seq > floor:
                    try:
                        send = subscriber.deliver(event)
                    except Exception:
                        # A fault in one subscriber must not cost the others their event.
                        log.exception("deliver_failed topic=%s seq=%d", event.topic, seq)
                        missed += 1
                        continue
                    if send is not None:
                        sends.append(send)
                else:
                    missed += 1
            self._delivered += len(subscribers) - missed
        return sends

    def take_delivered(self) -> int:
        """Return how many events were handed to subscribers since the last call (metrics)."""
        delivered, self._delivered = self._delivered, 0
        return delivered

    def topics_of(self, subscriber: Subscriber) -> frozenset[str]:
        """Return the topics a subscriber follows."""
        return frozenset(self._by_subscriber.get(subscriber, ()))

    def count(self, topic: str) -> int:
        """Return the number of local subscribers of a topic."""
        return len(self._topics.get(topic, ()))

    def counts(self) -> dict[str, int]:
        """Return local subscriber counts of every topic that has any."""
        return {topic: len(subscribers) for topic, subscribers in self._topics.items()}

    def _forget(self, subscriber: Subscriber, topic: str) -> None:
        topics = self._by_subscriber.get(subscriber)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self._by_subscriber[subscriber]
