"""The broker contract: topics, per-topic history and seq, and local fan-out.

A broker knows messages, topics and subscribers; it knows nothing of Flask, JSON or sockets.
Implementations sit beside this module (`memory.MemoryBroker`, `redis.RedisBroker`); the
blueprints only ever see this interface, so another transport can replace the memory one
unchanged.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("gateway.broker")


class TopicExists(Exception):
    """The topic name is already taken."""


class TopicNotFound(Exception):
    """No topic has this name."""


class BrokerUnavailable(Exception):
    """The broker's backing service cannot be reached; the operation did not happen."""


class LimitExceeded(Exception):
    """A quota (docs/configuration.md "Limits") refuses the operation; the message says which."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """What one gateway holds at most; 0 is no limit (docs/configuration.md "Limits")."""

    ring_bytes: int = 1 << 20  # encoded messages kept per topic, besides the ring's count
    max_topics: int = 0  # topics in the whole gateway
    max_topics_per_user: int = 0  # topics created by one user


@dataclass(slots=True)
class Event:
    """One published message, as stored in the history ring and delivered to subscribers.

    `payload` is the payload's JSON, encoded once when the message entered the gateway: a
    stored message costs about its encoded size, not a tree of Python objects many times
    larger, and nothing that sends it on (frames, history, SSE) can fail to encode it.
    `wire` is the ready-to-send frame, built once per publish by the broker's encoder so that
    fan-out to N subscribers costs N queue appends, not N serialisations.
    """

    topic: str
    id: str
    payload: bytes
    seq: int
    timestamp: float
    wire: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Publish:
    """One publish of a batch (`Broker.publish_many`): the arguments of `publish`."""

    topic: str
    message_id: str
    payload: bytes
    publisher: str | None = None
    check: Check | None = None


@dataclass(frozen=True, slots=True)
class Subscription:
    """What `subscribe` returns: the replayed history and where the topic's stream stands.

    `seq` is the topic's current seq (the replay runs up to it); `epoch` names this
    incarnation of the stream (a topic deleted and created again is a new stream);
    `recovered` says, for a `since_seq` resume, that every message after it was replayed.
    """

    replay: list[Event]
    seq: int
    epoch: str = ""
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """What `history` returns: ring messages after a seq, oldest first."""

    events: list[Event]
    seq: int
    epoch: str
    complete: bool


# How long a publish's idempotency key is remembered, and how many keys a topic keeps at
# most (the oldest go first): a key costs ~200 bytes whatever the message's size.
IDEMPOTENCY_SECONDS = 300
IDEMPOTENCY_KEYS_PER_TOPIC = 1000


def resume(
    ring: list[Event], since_seq: int, seq: int, same_epoch: bool
) -> tuple[list[Event], bool]:
    """Pick what a client that saw `since_seq` has missed, and whether that is all of it.

    From another epoch (or a seq the stream never reached, i.e. it restarted) the client's
    position means nothing here: it gets whatever the ring holds, and not `recovered`.
    """
    if not same_epoch or since_seq > seq:
        return list(ring), False
    missed = [event for event in ring if event.seq > since_seq]
    if since_seq == seq:
        return missed, True
    return missed, bool(missed) and missed[0].seq == since_seq + 1


# Who may publish to a topic, and who may subscribe (fixed when the topic is created).
PUBLISH_POLICIES = ("anyone", "members", "owner")
SUBSCRIBE_POLICIES = ("anyone", "members")


@dataclass(frozen=True, slots=True)
class Access:
    """A topic's owner, its policies and its members: the data behind every access decision.

    The decisions themselves are made in one place, gateway.guards.access; a broker only
    keeps this record with the topic and hands it to the checks callers give it. Members are
    user ids; the owner is a member whether listed or not. Immutable: a change of members
    replaces the record, so a check never sees one half-changed.
    """

    owner: str | None = None
    publish: str = "anyone"
    subscribe: str = "anyone"
    members: frozenset[str] = frozenset()


OPEN = Access()

# A check a caller hands to `publish`, `subscribe` or `delete_topic`: it raises (the caller's
# own exception, e.g. Forbidden) to refuse, and the broker then does nothing. It runs where
# the broker decides atomically (under the memory broker's lock), so it must not block.
Check = Callable[[Access], None]


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A snapshot of one topic for /topics, /stats and /health."""

    name: str
    subscribers: int
    messages: int
    owner: str | None = None  # the id of the user who created it
    access: Access = OPEN


# What a subscriber hands back from `deliver` or `topic_deleted`: the socket write to do
# once the broker's lock is released (None: nothing to do now).
Send = Callable[[], None] | None


class Subscriber(Protocol):
    """What the broker calls back on; implemented by a WebSocket connection or SSE stream.

    Both methods are called with the broker's lock held, so they must not block and must do
    no I/O: they append to the subscriber's own bounded queue. A subscriber that wants its
    socket written at once returns the write as a `Send`; the broker runs every returned
    Send after it has released its lock (`run_sends`), under gevent and threads alike, so
    that no publish ever waits on another connection's socket (tests/test_session.py).
    """

    # The user the subscriber acts for: what `remove_member` revokes is found by it.
    user_id: str

    def deliver(self, event: Event) -> Send: ...

    def topic_deleted(self, topic: str) -> Send: ...

    def access_revoked(self, topic: str) -> Send: ...


def run_sends(sends: list[Callable[[], None]]) -> None:
    """Run the writes subscribers handed back, after the broker's lock is released."""
    for send in sends:
        try:
            send()
        except Exception:
            # One connection's fault must not cost the others their write.
            log.exception("send_failed")


Encoder = Callable[[Event], bytes]


class Observer(Protocol):
    """What a broker reports as it works, for metrics (gateway.metrics.BrokerMetrics is one)."""

    def published(self, count: int) -> None:
        """`count` messages were given a seq by this process."""

    def fanned_out(self, events: Sequence[Event], deliveries: int) -> None:
        """`events` reached every local subscriber: `deliveries` queue appends, writes run."""


class _Unobserved:
    __slots__ = ()

    def published(self, count: int) -> None:
        pass

    def fanned_out(self, events: Sequence[Event], deliveries: int) -> None:
        pass


UNOBSERVED: Observer = _Unobserved()


class Broker(ABC):
    """Topics with a history ring and a per-topic seq, and fan-out to local subscribers.

    Contract, for every implementation:
    - `seq` starts at 1 when a topic is created and grows by one per published message;
      every subscriber of a topic receives its events in `seq` order, each exactly once.
    - `subscribe` registers the subscriber, then snapshots the last `last_n` events: the
      replay ends at `Subscription.seq` and every later event is delivered live. Events
      handed over while `subscribe` is still running may be ones the snapshot covers (a
      transport delivers late): callers skip those at or below `Subscription.seq`, as
      `Session` does; none at or below it arrives after `subscribe` returned.
    - `publish` never blocks on a subscriber: delivery is an append to its own queue.
    - deleting a topic tells each subscriber once (`topic_deleted`) and forgets them all;
      a topic created again under the same name starts from an empty history and seq 1.
    - a topic's history holds at most `ring_size` messages and `Quotas.ring_bytes` of
      encoded frames, oldest out first; one larger than that is delivered but not kept.
    - a topic keeps its Access (owner, policies, members) and loses it when deleted; a
      `check` given to `publish`, `subscribe` or `delete_topic` sees the topic's Access and
      may raise to refuse, in which case nothing was done. Member changes take effect on
      every worker within a second; `remove_member` stops delivery to the subscribers it
      revokes (each told once, `access_revoked`) in the topic's event order.
    - any call may raise BrokerUnavailable when a backing service is down; nothing was done.
    """

    @abstractmethod
    def create_topic(
        self,
        name: str,
        owner: str | None = None,
        publish: str = "anyone",
        subscribe: str = "anyone",
    ) -> None:
        """Create a topic owned by user id `owner`, with its publish and subscribe policies.

        Raise TopicExists if the name is taken, LimitExceeded past `Quotas.max_topics` or
        `Quotas.max_topics_per_user`.
        """

    @abstractmethod
    def delete_topic(self, name: str, check: Check | None = None) -> None:
        """Delete a topic and notify its subscribers; raise TopicNotFound if unknown."""

    @abstractmethod
    def access(self, name: str) -> Access:
        """Return the topic's Access; raise TopicNotFound."""

    @abstractmethod
    def add_member(self, name: str, user: str) -> None:
        """Make user id `user` a member of the topic (idempotent); raise TopicNotFound."""

    @abstractmethod
    def remove_member(self, name: str, user: str, revoke: bool) -> None:
        """Take `user` off the topic's members (idempotent); raise TopicNotFound.

        With `revoke`, every subscription of that user to the topic ends (`access_revoked`),
        on every worker: the caller decided that the user may no longer subscribe.
        """

    @abstractmethod
    def topics(self) -> list[TopicInfo]:
        """Return a snapshot of every topic, sorted by name."""

    @abstractmethod
    def publish(
        self,
        topic: str,
        message_id: str,
        payload: bytes,
        idempotency_key: str | None = None,
        publisher: str | None = None,
        check: Check | None = None,
    ) -> Event:
        """Assign the next seq, store the event in the ring and fan it out; raise TopicNotFound.

        `payload` is the payload's JSON. A publish that repeats an `idempotency_key` of the
        same `publisher` and topic within IDEMPOTENCY_SECONDS (and among the topic's last
        IDEMPOTENCY_KEYS_PER_TOPIC keys) returns the first publish's id, seq and timestamp
        (with an empty payload) and delivers nothing.
        """

    def publish_many(self, requests: Sequence[Publish]) -> list[Event | Exception]:
        """Publish each request in order; return each one's Event or the exception it raised.

        One client's pipelined publishes (docs/performance.md): a broker with a network
        round trip per publish sends them together. Each request succeeds or fails on its
        own, exactly as `publish` would; BrokerUnavailable is raised for the whole batch,
        and then any of them may or may not have been published, as with one `publish`
        whose answer was lost.
        """
        results: list[Event | Exception] = []
        for request in requests:
            try:
                results.append(
                    self.publish(
                        request.topic,
                        request.message_id,
                        request.payload,
                        publisher=request.publisher,
                        check=request.check,
                    )
                )
            except BrokerUnavailable:
                raise
            except Exception as exc:
                results.append(exc)
        return results

    @abstractmethod
    def subscribe(
        self,
        topic: str,
        subscriber: Subscriber,
        last_n: int = 0,
        since_seq: int | None = None,
        epoch: str | None = None,
        check: Check | None = None,
    ) -> Subscription:
        """Register a subscriber and replay its history; raise TopicNotFound.

        `last_n` replays the last n events; `since_seq` (with the `epoch` the client saw it
        in) replays every event after it that the ring still holds, per `resume`.
        Subscribing again while subscribed keeps the one subscription and replays nothing.
        """

    @abstractmethod
    def history(
        self, topic: str, since_seq: int = 0, limit: int = 100, epoch: str | None = None
    ) -> History:
        """Return up to `limit` ring events after `since_seq`, oldest first; raise TopicNotFound."""

    @abstractmethod
    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Remove one subscription (a no-op if absent); raise TopicNotFound if unknown."""

    @abstractmethod
    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        """Remove every subscription of a subscriber that went away."""

    @abstractmethod
    def following(self, subscriber: Subscriber) -> frozenset[str]:
        """Return the topics a local subscriber follows (MAX_SUBSCRIPTIONS_PER_CONNECTION)."""

    @abstractmethod
    def local_subscriptions(self) -> int:
        """Return how many subscriptions this process's subscribers hold."""

    @abstractmethod
    def subscriber_count(self) -> int:
        """Return the number of (subscriber, topic) subscriptions."""

    @abstractmethod
    def claim_connection(self, user: str, limit: int) -> bool:
        """Count one more open connection of `user` unless it has `limit` (0: no limit) already.

        Counted across every worker sharing the broker; False when refused.
        """

    @abstractmethod
    def release_connection(self, user: str) -> None:
        """Count one connection of `user` fewer (it closed)."""

    def problems(self) -> dict[str, str]:
        """Return what keeps the broker from serving, by check name (empty: ready)."""
        return {}

    def start(self) -> Broker:
        """Start what the broker runs in the background; return the broker."""
        return self

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by the broker."""
