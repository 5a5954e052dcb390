"""MemoryBroker: the whole broker in one process, behind one lock (the embedded default)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, OrderedDict, deque

from gateway.brokers.contract import (
    IDEMPOTENCY_KEYS_PER_TOPIC,
    IDEMPOTENCY_SECONDS,
    UNOBSERVED,
    Access,
    Broker,
    Check,
    Encoder,
    Event,
    History,
    LimitExceeded,
    Observer,
    Quotas,
    Subscriber,
    Subscription,
    TopicExists,
    TopicInfo,
    TopicNotFound,
    resume,
    run_sends,
)
from gateway.brokers.fanout import Fanout

# What a stored message adds to its payload and id: seq, timestamp and separators, as in the
# Redis broker's entries ("seq:" + ["id",timestamp] + newline + payload).
_ENTRY_OVERHEAD = 32


class _Topic:
    """One topic's ring, last seq (also its message count), epoch, access and idempotency keys."""

    __slots__ = ("access", "epoch", "keys", "ring", "ring_bytes", "seq")

    def __init__(self, access: Access) -> None:
        self.ring: deque[Event] = deque()
        self.ring_bytes = 0  # encoded frames held by the ring
        self.seq = 0
        self.access = access
        # A new id per creation, and so per process: a restart starts new streams.
        self.epoch = uuid.uuid4().hex[:16]
        # (publisher, key) -> (id, seq, timestamp, expiry); oldest first.
        self.keys: OrderedDict[tuple[str | None, str], tuple[str, int, float, float]] = (
            OrderedDict()
        )

    def keep(self, event: Event, ring_size: int, ring_bytes: int) -> None:
        """Add an event to the ring; the oldest go while it is over its count or bytes.

        The bytes counted are the message's: its payload's JSON and its id, as the Redis
        broker counts its stored entries. An event larger than the budget empties the ring:
        history must stay contiguous up to the seq.
        """
        ring = self.ring
        ring.append(event)
        self.ring_bytes += _held(event)
        while ring and (len(ring) > ring_size or (ring_bytes and self.ring_bytes > ring_bytes)):
            self.ring_bytes -= _held(ring.popleft())

    def remembered(self, key: tuple[str | None, str], now: float) -> Event | None:
        """Forget expired keys; return what was first published under `key`, if anything."""
        keys = self.keys
        while keys:
            oldest, (*_, expiry) = next(iter(keys.items()))
            if expiry > now:
                break
            del keys[oldest]
        hit = keys.get(key)
        return None if hit is None else Event("", hit[0], b"", hit[1], hit[2])

    def remember(self, key: tuple[str | None, str], event: Event) -> None:
        """Keep what a duplicate of `key` is told: the first publish's id, seq and time."""
        self.keys[key] = (
            event.id,
            event.seq,
            event.timestamp,
            event.timestamp + IDEMPOTENCY_SECONDS,
        )
        if len(self.keys) > IDEMPOTENCY_KEYS_PER_TOPIC:
            self.keys.popitem(last=False)


def _held(event: Event) -> int:
    return len(event.payload) + len(event.id) + _ENTRY_OVERHEAD


class MemoryBroker(Broker):
    """A lock-protected in-process broker.

    Fan-out happens under the lock on purpose: delivering is a non-blocking append to each
    subscriber's own queue, and doing it there is what makes queue order equal seq order when
    two publishers race (real threads on the dev server, greenlets under gunicorn). For the
    same reason registering a subscriber and snapshotting its replay are one atomic step.
    """

    def __init__(
        self,
        ring_size: int,
        encode: Encoder,
        quotas: Quotas | None = None,
        observer: Observer = UNOBSERVED,
    ) -> None:
        self._ring_size = ring_size
        self._observer = observer
        self._encode = encode
        self._quotas = quotas or Quotas()
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._owned: Counter[str | None] = Counter()  # topics per creator
        self._connections: Counter[str] = Counter()  # open connections per user
        self._fanout = Fanout()

    def create_topic(
        self,
        name: str,
        owner: str | None = None,
        publish: str = "anyone",
        subscribe: str = "anyone",
    ) -> None:
        quotas = self._quotas
        with self._lock:
            if name in self._topics:
                raise TopicExists(name)
            if quotas.max_topics and len(self._topics) >= quotas.max_topics:
                raise LimitExceeded(f"the gateway holds its maximum of {quotas.max_topics} topics")
            if quotas.max_topics_per_user and self._owned[owner] >= quotas.max_topics_per_user:
                raise LimitExceeded(
                    f"you already own the maximum of {quotas.max_topics_per_user} topics"
                )
            self._topics[name] = _Topic(Access(owner, publish, subscribe))
            self._owned[owner] += 1

    def delete_topic(self, name: str, check: Check | None = None) -> None:
        with self._lock:
            state = self._state(name)
            if check is not None:
                check(state.access)
            del self._topics[name]
            owner = state.access.owner
            self._owned[owner] -= 1
            if not self._owned[owner]:
                del self._owned[owner]
            sends = self._fanout.drop_topic(name)
        run_sends(sends)

    def access(self, name: str) -> Access:
        with self._lock:
            return self._state(name).access

    def add_member(self, name: str, user: str) -> None:
        with self._lock:
            state = self._state(name)
            access = state.access
            state.access = Access(
                access.owner, access.publish, access.subscribe, access.members | {user}
            )

    def remove_member(self, name: str, user: str, revoke: bool) -> None:
        with self._lock:
            state = self._state(name)
            access = state.access
            state.access = Access(
                access.owner, access.publish, access.subscribe, access.members - {user}
            )
            sends = self._fanout.revoke(name, user) if revoke else []
        run_sends(sends)

    def _state(self, name: str) -> _Topic:
        """Return the topic's state (lock held); raise TopicNotFound."""
        state = self._topics.get(name)
        if state is None:
            raise TopicNotFound(name)
        return state

    def topics(self) -> list[TopicInfo]:
        with self._lock:
            return [
                TopicInfo(
                    name, self._fanout.count(name), topic.seq, topic.access.owner, topic.access
                )
                for name, topic in sorted(self._topics.items())
            ]

    def publish(
        self,
        topic: str,
        message_id: str,
        payload: bytes,
        idempotency_key: str | None = None,
        publisher: str | None = None,
        check: Check | None = None,
    ) -> Event:
        key = None if idempotency_key is None else (publisher, idempotency_key)
        with self._lock:
            state = self._state(topic)
            if check is not None:
                check(state.access)
            now = time.time()
            if key is not None:
                first = state.remembered(key, now)
                if first is not None:
                    first.topic = topic
                    return first
            state.seq += 1
            # The ring keeps the message without its frame, which only live delivery sends
            # (a replay is framed anew): a stored message costs about its encoded size.
            stored = Event(topic, message_id, payload, state.seq, now)
            event = Event(topic, message_id, payload, state.seq, now)
            # Cannot fail: the payload is JSON already (gateway.protocol.encode_payload).
            event.wire = self._encode(event)
            if self._ring_size:
                state.keep(stored, self._ring_size, self._quotas.ring_bytes)
            if key is not None:
                state.remember(key, event)
            sends = self._fanout.deliver(event)
            deliveries = self._fanout.take_delivered()
        run_sends(sends)
        self._observer.published(1)
        self._observer.fanned_out((event,), deliveries)
        return event

    def subscribe(
        self,
        topic: str,
        subscriber: Subscriber,
        last_n: int = 0,
        since_seq: int | None = None,
        epoch: str | None = None,
        check: Check | None = None,
    ) -> Subscription:
        with self._lock:
            state = self._state(topic)
            if check is not None:
                check(state.access)
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

    def following(self, subscriber: Subscriber) -> frozenset[str]:
        with self._lock:
            return self._fanout.topics_of(subscriber)

    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._fanout.remove_all(subscriber)

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(self._fanout.counts().values())

    def local_subscriptions(self) -> int:
        return self.subscriber_count()

    def claim_connection(self, user: str, limit: int) -> bool:
        with self._lock:
            if limit and self._connections[user] >= limit:
                return False
            self._connections[user] += 1
            return True

    def release_connection(self, user: str) -> None:
        with self._lock:
            self._connections[user] -= 1
            if self._connections[user] <= 0:
                del self._connections[user]
