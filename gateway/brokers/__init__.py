"""The brokers: topics, their history rings and seqs, and fan-out to local subscribers.

This package owns what a message goes through between a publish and a subscriber's queue:
`contract` (the Broker interface, its events and errors, documented once), `fanout` (local
subscribers and delivery, shared by every broker), `memory` (MemoryBroker, one process) and
`redis` (RedisBroker, any number of workers sharing one Redis). It knows no Flask and no
sockets, and payloads are opaque JSON bytes to it: it may import the standard library,
`gateway.supervisor`, redis and orjson (inside `redis` only, loaded on demand once gevent
has patched the worker; orjson for the stored entry's header), and nothing else of the
gateway (tests/test_layout.py). Callers import from here, or `from gateway.brokers.redis import RedisBroker`.
"""

from __future__ import annotations

from gateway.brokers.contract import (
    IDEMPOTENCY_KEYS_PER_TOPIC,
    IDEMPOTENCY_SECONDS,
    OPEN,
    PUBLISH_POLICIES,
    SUBSCRIBE_POLICIES,
    Access,
    Broker,
    BrokerUnavailable,
    Check,
    Encoder,
    Event,
    History,
    LimitExceeded,
    Publish,
    Quotas,
    Send,
    Subscriber,
    Subscription,
    TopicExists,
    TopicInfo,
    TopicNotFound,
    resume,
)
from gateway.brokers.memory import MemoryBroker

__all__ = [
    "OPEN",
    "PUBLISH_POLICIES",
    "SUBSCRIBE_POLICIES",
    "Access",
    "Check",
    "IDEMPOTENCY_KEYS_PER_TOPIC",
    "IDEMPOTENCY_SECONDS",
    "Broker",
    "BrokerUnavailable",
    "Encoder",
    "Event",
    "History",
    "LimitExceeded",
    "MemoryBroker",
    "Publish",
    "Quotas",
    "Send",
    "Subscriber",
    "Subscription",
    "TopicExists",
    "TopicInfo",
    "TopicNotFound",
    "resume",
]
