"""Publishing on Redis: the PUBLISH script, one call or a pipeline of them per batch.

A publish is one Lua call (scripts.PUBLISH): it checks the topic and the epoch its access
was checked in, gives the next seq, keeps the entry in the ring and sends it on the topic's
channel. A batch (one client's pipelined publishes, Broker.publish_many) is one pipeline:
one round trip instead of one per publish. The publisher also keeps, per topic, the last seq
its publishes got: the script never hands out a seq at or below it again in the same
creation of the topic, even when Redis went back in a failover (docs/operations.md
"Redis Sentinel").
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from gateway.brokers.contract import (
    IDEMPOTENCY_KEYS_PER_TOPIC,
    IDEMPOTENCY_SECONDS,
    BrokerUnavailable,
    Check,
    Event,
    Observer,
    Publish,
    TopicNotFound,
)
from gateway.brokers.redis import scripts
from gateway.brokers.redis.access import AccessStore

# Topics whose last published seq a worker remembers (for failovers), at most.
_PUBLISHED_KEPT = 100_000


class Publisher:
    """The publish operations of one RedisBroker (its `publish` and `publish_many`)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: scripts.Keys,
        access: AccessStore,
        ring_size: int,
        ring_bytes: int,
        observer: Observer,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._access = access
        self._ring_size = ring_size
        self._ring_bytes = ring_bytes
        self._observer = observer
        self._script = client.register_script(scripts.PUBLISH)
        # The last seq this worker's publishes got, per topic, and the epoch it was got in.
        self._published: dict[str, tuple[str, bytes]] = {}

    def forget(self, topic: str) -> None:
        """Forget a deleted topic's last seq (a new creation starts from 1)."""
        self._published.pop(topic, None)

    def publish(
        self,
        topic: str,
        message_id: str,
        payload: bytes,
        idempotency_key: str | None = None,
        publisher: str | None = None,
        check: Check | None = None,
    ) -> Event:
        epoch = self._access.checked(topic, check) if check is not None else ""
        keys, args = self._publish_call(
            topic, message_id, payload, publisher, idempotency_key, epoch
        )
        event = self._published_event(topic, epoch, self._script(keys=keys, args=args))
        if event is None:  # checked against a topic since deleted and created again
            return self.publish(topic, message_id, payload, idempotency_key, publisher, check)
        return event

    def publish_many(self, requests: Sequence[Publish]) -> list[Event | Exception]:
        # One pipeline for the batch: one round trip instead of one per publish. The script
        # is called by its hash; if Redis lost it (a restart), it is loaded and what it
        # refused is sent again, in order (a refused call did nothing).
        results: list[Event | Exception | None] = [None] * len(requests)
        sent: list[tuple[int, str, list, list]] = []
        # One access copy, so one epoch, per topic of the batch: publishes to a topic keep
        # their order even if the copy expires meanwhile (a stale epoch would be retried
        # after the publishes behind it).
        epochs: dict[tuple[str, str | None], str] = {}
        pipe = self._redis.pipeline(transaction=False)
        for index, request in enumerate(requests):
            topic = request.topic
            epoch = epochs.get((topic, request.publisher))
            if epoch is None:
                try:
                    epoch = self._access.checked(topic, request.check) if request.check else ""
                except (redis.ConnectionError, redis.TimeoutError, BrokerUnavailable):
                    raise  # nothing was sent: the whole batch is unavailable
                except Exception as exc:  # refused, or no such topic: this one alone fails
                    results[index] = exc
                    continue
                epochs[(topic, request.publisher)] = epoch
            keys, args = self._publish_call(
                topic, request.message_id, request.payload, request.publisher, None, epoch
            )
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            sent.append((index, epoch, keys, args))
        replies = pipe.execute(raise_on_error=False) if sent else []
        for (index, epoch, keys, args), reply in zip(sent, replies, strict=True):
            request = requests[index]
            try:
                if isinstance(reply, redis.exceptions.NoScriptError):
                    reply = self._script(keys=keys, args=args)
                elif isinstance(reply, Exception):
                    raise reply
                event = self._published_event(request.topic, epoch, reply)
                if event is None:
                    event = self.publish(
                        request.topic,
                        request.message_id,
                        request.payload,
                        publisher=request.publisher,
                        check=request.check,
                    )
                results[index] = event
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Only this one is in doubt: the ones before it are published (and answered
                # so), the ones after it are tried and fail or succeed on their own.
                results[index] = BrokerUnavailable(f"redis: {exc}")
            except Exception as exc:
                results[index] = exc
        return results  # type: ignore[return-value]

    def _publish_call(
        self,
        topic: str,
        message_id: str,
        payload: bytes,
        publisher: str | None,
        idempotency_key: str | None,
        epoch: str,
    ) -> tuple[list[str], list]:
        """Return the KEYS and ARGV of one PUBLISH."""
        keys = self._keys.publish(topic, publisher or "", idempotency_key)
        body = scripts.pack_message(message_id, payload, time.time())
        if idempotency_key is None:
            ttl, head = "", b""
        else:
            # What a duplicate is told: the message without its payload.
            ttl, head = IDEMPOTENCY_SECONDS, body[: body.index(b"\n") + 1]
        args = [
            topic,
            body,
            self._ring_size,
            ttl,
            self._ring_bytes,
            IDEMPOTENCY_KEYS_PER_TOPIC,
            head,
            epoch,  # the creation of the topic whose access was checked, if any
            *self._published.get(topic, ("", "")),
        ]
        return keys, args

    def _published_event(self, topic: str, epoch: str, reply: list) -> Event | None:
        """Read PUBLISH's reply; None if the topic was created again since the check."""
        seq, entry, *created = reply
        if seq == -2:
            self._access.forget(topic)
            return None
        if seq < 0:
            raise TopicNotFound(topic)
        # Local subscribers get the event from the channel, in seq order with everyone else;
        # a repeated idempotency key returns the first publish's entry and sends nothing.
        event = scripts.read_entry(topic, entry)
        if created:  # a new message, not the repeat of an idempotency key
            self._observer.published(1)
            # PUBLISH continues above it if Redis went back in a failover, within the same
            # creation of the topic (docs/operations.md "Redis Sentinel").
            if len(self._published) >= _PUBLISHED_KEPT and topic not in self._published:
                self._published.clear()  # a bound: names of deleted topics pile up otherwise
            self._published[topic] = (str(event.seq), created[0])
        return event
