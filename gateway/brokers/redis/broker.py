"""RedisBroker: the broker's operations, on topics, rings and seqs kept in Redis.

Each operation is one Lua script (scripts.py) or one pipeline, through client.py's pool.
Beside the operations run the two pieces RedisBroker composes and supervises: the
`Listener`, which brings every followed channel to this worker's subscribers, and the
`ClusterCounts`, which keep this worker's subscriber and connection counts in Redis and
sum every live worker's. Topic access (owner, policies, members) is `AccessStore`'s.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Sequence

import redis

from gateway.brokers.contract import (
    UNOBSERVED,
    Access,
    Broker,
    Check,
    Encoder,
    Event,
    History,
    LimitExceeded,
    Observer,
    Publish,
    Quotas,
    Subscriber,
    Subscription,
    TopicExists,
    TopicInfo,
    TopicNotFound,
    resume,
)
from gateway.brokers.fanout import Fanout
from gateway.brokers.redis import scripts
from gateway.brokers.redis.access import AccessStore
from gateway.brokers.redis.client import connect, unavailable
from gateway.brokers.redis.counts import ClusterCounts
from gateway.brokers.redis.listener import Listener
from gateway.brokers.redis.publishing import Publisher
from gateway.supervisor import Loop


class RedisBroker(Broker):
    """A broker whose topics, rings and seqs live in Redis, shared by every worker."""

    def __init__(
        self,
        url: str,
        ring_size: int,
        encode: Encoder,
        prefix: str = "gw",
        quotas: Quotas | None = None,
        observer: Observer = UNOBSERVED,
    ) -> None:
        self._ring_size = ring_size
        self._quotas = quotas or Quotas()
        self._keys = scripts.Keys(prefix)
        worker = uuid.uuid4().hex[:12]
        self._redis = connect(url)
        self._create_script = self._redis.register_script(scripts.CREATE)
        self._delete_script = self._redis.register_script(scripts.DELETE)
        self._access = AccessStore(self._redis, self._keys)
        self._publisher = Publisher(
            self._redis,
            self._keys,
            self._access,
            ring_size,
            self._quotas.ring_bytes,
            observer,
        )
        # One lock for the fan-out and the local state of the listener and the counts: held
        # for a snapshot or an update, never across a Redis call.
        self._lock = threading.Lock()
        self._fanout = Fanout()
        self._stopping = threading.Event()
        self._counts = ClusterCounts(
            self._redis, self._keys, worker, self._lock, self._fanout, self._stopping
        )
        self._listener = Listener(
            self._redis,
            self._keys,
            worker,
            self._lock,
            self._fanout,
            self._counts,
            self._access,
            encode,
            self._stopping,
            observer,
        )
        self._listener_loop: Loop | None = None
        self._beat: Loop | None = None

    def start(self) -> RedisBroker:
        """Start the listener and the heartbeat, once, in the process that serves.

        Under gunicorn that is the worker, after gevent patched it: refuse to start where
        redis would block the whole event loop (redis loaded unpatched).
        """
        if self._listener_loop is None:
            _check_cooperative()
            self._listener_loop = Loop("redis-listener", self._listener.run, self._stopping)
            self._beat = Loop("redis-heartbeat", self._counts.heartbeat, self._stopping)
            self._listener_loop.start()
            self._beat.start()
        return self

    # Broker ------------------------------------------------------------------------------------

    @unavailable
    def create_topic(
        self,
        name: str,
        owner: str | None = None,
        publish: str = "anyone",
        subscribe: str = "anyone",
    ) -> None:
        # A name used before starts from seq 1 (deletion removed these, but be certain).
        keys = self._keys.create(name)
        quotas = self._quotas
        args = [
            name,
            uuid.uuid4().hex,
            owner or "",
            quotas.max_topics,
            quotas.max_topics_per_user,
            f"{publish} {subscribe}",
        ]
        self._access.forget(name)
        created = self._create_script(keys=keys, args=args)
        if created == 0:
            raise TopicExists(name)
        if created == -1:
            raise LimitExceeded(f"the gateway holds its maximum of {quotas.max_topics} topics")
        if created == -2:
            raise LimitExceeded(
                f"you already own the maximum of {quotas.max_topics_per_user} topics"
            )

    @unavailable
    def delete_topic(self, name: str, check: Check | None = None) -> None:
        epoch = ""
        if check is not None:
            known = self._access.read(name)
            check(known.access)
            epoch = known.epoch
        keys = self._keys.delete(name)
        self._access.forget(name)
        self._publisher.forget(name)
        deleted = self._delete_script(keys=keys, args=[name, epoch])
        if deleted == -1:  # deleted and created again since the check: check the new one
            self.delete_topic(name, check)
        elif not deleted:
            raise TopicNotFound(name)

    @unavailable
    def access(self, name: str) -> Access:
        return self._access.read(name).access

    @unavailable
    def add_member(self, name: str, user: str) -> None:
        self._access.change(name, user, add=True)

    @unavailable
    def remove_member(self, name: str, user: str, revoke: bool) -> None:
        self._access.change(name, user, add=False, revoke=revoke)

    @unavailable
    def topics(self) -> list[TopicInfo]:
        names = sorted(n.decode() for n in self._redis.hkeys(self._keys.topics))
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.get(self._keys.of("seq", name))
        for name in names:
            self._access.queue_read(pipe, name)
        results = pipe.execute()
        seqs, reads = results[: len(names)], results[len(names) :]
        counts = self._counts.totals()
        found = []
        for index, (name, seq) in enumerate(zip(names, seqs, strict=True)):
            try:
                access = self._access.parse(name, reads[4 * index : 4 * index + 4]).access
            except TopicNotFound:
                continue  # deleted meanwhile
            found.append(TopicInfo(name, counts.get(name, 0), int(seq or 0), access.owner, access))
        return found

    @unavailable
    def publish(
        self,
        topic: str,
        message_id: str,
        payload: bytes,
        idempotency_key: str | None = None,
        publisher: str | None = None,
        check: Check | None = None,
    ) -> Event:
        return self._publisher.publish(
            topic, message_id, payload, idempotency_key, publisher, check
        )

    @unavailable
    def publish_many(self, requests: Sequence[Publish]) -> list[Event | Exception]:
        if len(requests) < 2:  # nothing to pipeline: one publish, or none
            return super().publish_many(requests)
        return self._publisher.publish_many(requests)

    @unavailable
    def subscribe(
        self,
        topic: str,
        subscriber: Subscriber,
        last_n: int = 0,
        since_seq: int | None = None,
        epoch: str | None = None,
        check: Check | None = None,
    ) -> Subscription:
        if not self._redis.hexists(self._keys.topics, topic):
            raise TopicNotFound(topic)
        self._listener.listen_to(topic)
        with self._lock:
            added = self._fanout.add(topic, subscriber)
            if added:
                self._counts.changed(topic, +1)
        # Registered (or following already): the channel is now kept by the subscription.
        self._listener.arrived(topic)
        if not added:
            seq, current_epoch, _, access = self._snapshot(topic, 0, check is not None)
            if check is not None:
                check(access)
            return Subscription([], seq, current_epoch, since_seq is not None)
        self._counts.flush()
        # Registered first, snapshot (and access) second: nothing published in between is
        # missed, what the channel brings late at or below the snapshot's seq is skipped
        # (floor), and a revocation after the access was read reaches the registration.
        # The ring never holds more than ring_size: a larger last_n asks for all of it.
        depth = self._ring_size if since_seq is not None else min(last_n, self._ring_size)
        try:
            seq, current_epoch, ring, access = self._snapshot(topic, depth, check is not None)
            if check is not None:
                check(access)
        except Exception:
            # Not subscribed after all: a retry must find no half-made subscription.
            with self._lock:
                if self._fanout.remove(topic, subscriber):
                    self._counts.changed(topic, -1)
            self._counts.flush()
            raise
        with self._lock:
            self._fanout.set_floor(topic, subscriber, seq)
        if since_seq is not None:
            same = epoch is None or epoch == current_epoch
            replay, recovered = resume(ring, since_seq, seq, same)
            return Subscription(replay, seq, current_epoch, recovered)
        return Subscription(ring, seq, current_epoch)

    @unavailable
    def history(
        self, topic: str, since_seq: int = 0, limit: int = 100, epoch: str | None = None
    ) -> History:
        seq, current_epoch, ring, _ = self._snapshot(topic, self._ring_size)
        if not current_epoch:
            raise TopicNotFound(topic)
        same = epoch is None or epoch == current_epoch
        events, complete = resume(ring, since_seq, seq, same)
        return History(events[:limit], seq, current_epoch, complete)

    def _snapshot(
        self, topic: str, depth: int, with_access: bool = False
    ) -> tuple[int, str, list[Event], Access | None]:
        """Read a topic's seq, epoch, last `depth` ring events (and access) in one transaction."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._keys.of("seq", topic))
        pipe.hget(self._keys.topics, topic)
        pipe.lrange(self._keys.of("ring", topic), -depth, -1)
        if with_access:
            self._access.queue_read(pipe, topic)
        seq, epoch, entries, *reads = pipe.execute()
        ring = [scripts.read_entry(topic, e) for e in entries] if depth else []
        access = self._access.parse(topic, reads).access if with_access else None
        return int(seq or 0), (epoch or b"").decode(), ring, access

    @unavailable
    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        if not self._redis.hexists(self._keys.topics, topic):
            raise TopicNotFound(topic)
        with self._lock:
            if self._fanout.remove(topic, subscriber):
                self._counts.changed(topic, -1)
        self._counts.flush()

    def following(self, subscriber: Subscriber) -> frozenset[str]:
        with self._lock:
            return self._fanout.topics_of(subscriber)

    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        with self._lock:
            for topic in self._fanout.remove_all(subscriber):
                self._counts.changed(topic, -1)
        self._counts.flush()

    def local_subscriptions(self) -> int:
        with self._lock:
            return sum(self._fanout.counts().values())

    @unavailable
    def subscriber_count(self) -> int:
        return sum(self._counts.totals().values())

    @unavailable
    def claim_connection(self, user: str, limit: int) -> bool:
        return self._counts.claim(user, limit)

    def release_connection(self, user: str) -> None:
        self._counts.release(user)

    def problems(self) -> dict[str, str]:
        found = {}
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            found["broker"] = f"redis unreachable: {exc}"
        if self._listener_loop is None:
            found["listener"] = "the Redis listener has not been started"
        elif not self._listener_loop.running:
            found["listener"] = "the Redis listener stopped and is being restarted"
        elif not self._listener.connected:
            found["listener"] = "the Redis listener is reconnecting"
        return found

    def close(self) -> None:
        if self._stopping.is_set():
            return  # closed already (worker_exit, then the process's exit)
        self._stopping.set()
        self._counts.leave()
        self._listener.close()
        self._redis.close()


def _check_cooperative() -> None:
    """Raise if gevent patched this process but redis would still block its event loop.

    redis-py finds sockets and locks through the `socket` and `threading` modules at call
    time, so patching after import is enough; this guards against a process where only part
    of the standard library was patched (socket without threading, say).
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return
    if not monkey.is_module_patched("threading"):
        raise RuntimeError(
            "gevent patched socket but not threading: redis's connection pool would block "
            "the event loop; patch everything (gunicorn's gevent worker does)"
        )
