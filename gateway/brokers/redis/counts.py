"""Cluster counts: subscribers and connections of every live worker, summed from Redis.

Each worker keeps its own counts in Redis (`{p}:subs:{id}`, `{p}:conns:{id}`) and beats in
`{p}:workers`. /topics, /stats and /health sum the counts of the workers whose heartbeat is
fresh, and per-user connection limits hold across workers through the same sums; a worker
that vanished without a goodbye stops counting once its heartbeat is WORKER_TTL old.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from gateway.brokers.fanout import Fanout
from gateway.brokers.redis.scripts import CLAIM, Keys

log = logging.getLogger("gateway.broker")

# A worker whose heartbeat is older than this no longer counts in /health and /stats.
WORKER_TTL = 15.0
_HEARTBEAT_SECONDS = 5.0


class ClusterCounts:
    """This worker's subscriber and connection counts in Redis, and their sums over workers."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker: str,
        lock: threading.Lock,
        fanout: Fanout,
        stopping: threading.Event,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._worker = worker
        self._lock = lock  # the broker's: it guards `fanout` and `_connections`
        self._fanout = fanout
        self._stopping = stopping
        self._claim_script = client.register_script(CLAIM)
        # Set when an increment of this worker's counts in Redis may have been lost; the next
        # heartbeat then rewrites them. A new worker id starts with no counts in Redis.
        self._stale = False
        # Subscriber count changes not yet sent to Redis, recorded under `_lock` with the
        # fan-out change itself: each is either in a rewrite's snapshot or sent after it.
        self._pending: dict[str, int] = {}
        self._connections: dict[str, int] = {}  # open connections per user, this worker
        # Orders claims, releases and the heartbeat's rewrite of this worker's connection
        # counts in Redis. Unlike `_lock`, it is held across a Redis call: it only ever
        # makes one connection's upgrade wait for another's.
        self._conns_lock = threading.Lock()

    def mark_stale(self) -> None:
        """Have the next heartbeat rewrite this worker's counts from the local truth."""
        self._stale = True

    # Subscribers -------------------------------------------------------------------------------

    def changed(self, topic: str, delta: int) -> None:
        """Record a change of `topic`'s local subscribers; the caller holds the broker's lock.

        `flush` sends it, after the lock is released.
        """
        self._pending[topic] = self._pending.get(topic, 0) + delta

    def flush(self) -> None:
        """Send the recorded changes to Redis (HINCRBY), in order with the heartbeat's rewrite."""
        if not self._pending:
            return
        with self._conns_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            pending = {topic: delta for topic, delta in pending.items() if delta}
            if not pending:
                return
            # If this fails, the next heartbeat rewrites the whole map from the local truth.
            try:
                pipe = self._redis.pipeline(transaction=False)
                for topic, delta in pending.items():
                    pipe.hincrby(self._keys.of("subs", self._worker), topic, delta)
                pipe.execute()
            except redis.RedisError as exc:
                self._stale = True
                log.warning("redis_count_failed topics=%d error=%s", len(pending), exc)

    def forget_topic(self, topic: str) -> None:
        """Drop this worker's count of a deleted topic (and its changes not yet sent)."""
        with self._conns_lock:
            with self._lock:
                self._pending.pop(topic, None)
            self._redis.hdel(self._keys.of("subs", self._worker), topic)

    def alive_workers(self) -> set[str]:
        """Return the workers whose heartbeat is fresh, this one always among them."""
        alive = self._redis.zrangebyscore(self._keys.workers, time.time() - WORKER_TTL, "+inf")
        return {w.decode() for w in alive} | {self._worker}

    def totals(self) -> dict[str, int]:
        """Return the subscriber count of every topic that has any, summed over live workers."""
        pipe = self._redis.pipeline(transaction=False)
        for worker in self.alive_workers():
            pipe.hgetall(self._keys.of("subs", worker))
        totals: dict[str, int] = {}
        for counts in pipe.execute():
            for name, count in counts.items():
                topic = name.decode()
                totals[topic] = totals.get(topic, 0) + int(count)
        return {topic: count for topic, count in totals.items() if count > 0}

    # Connections -------------------------------------------------------------------------------

    def claim(self, user: str, limit: int) -> bool:
        """Count one more connection of `user` unless live workers hold `limit` already."""
        if not limit:
            return True  # not counted: release finds nothing to release
        others = self.alive_workers() - {self._worker}
        keys = [self._keys.of("conns", w) for w in (self._worker, *sorted(others))]
        with self._conns_lock:
            if not self._claim_script(keys=keys, args=[user, limit, int(WORKER_TTL * 2)]):
                return False
            with self._lock:
                self._connections[user] = self._connections.get(user, 0) + 1
        return True

    def _forget_connection(self, user: str) -> bool:
        """Take one connection of `user` off the local count; False if it had none."""
        with self._lock:
            left = self._connections.get(user, 0) - 1
            if left < 0:
                return False
            if left:
                self._connections[user] = left
            else:
                del self._connections[user]
            return True

    def release(self, user: str) -> None:
        """Count one connection of `user` fewer; a failure is repaired by the heartbeat."""
        try:
            with self._conns_lock:
                if not self._forget_connection(user):
                    return  # never counted (no limit)
                self._redis.hincrby(self._keys.of("conns", self._worker), user, -1)
        except redis.RedisError as exc:
            self._stale = True  # the heartbeat rewrites the map from the local truth
            log.warning("redis_count_failed what=connections error=%s", exc)

    # Heartbeat ---------------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Say this worker is alive and keep its counts from expiring; forget dead workers.

        Counts move by HINCRBY as subscribers come and go; the whole map is rewritten from
        the local truth only after an increment failed (Redis was away). The snapshot and the
        pending changes are taken together, and increments are sent under the same lock as
        the rewrite, so no change is lost to the rewrite's DEL or counted twice.
        """
        key = self._keys.of("subs", self._worker)
        conns_key = self._keys.of("conns", self._worker)
        workers_key = self._keys.workers
        while not self._stopping.is_set():
            now = time.time()
            try:
                pipe = self._redis.pipeline(transaction=True)
                # No claim or release may run between reading the local counts and
                # writing them: it would be lost or counted twice.
                with self._conns_lock:
                    if self._stale:
                        self._stale = False
                        with self._lock:
                            counts = self._fanout.counts()
                            connections = dict(self._connections)
                            self._pending.clear()  # the snapshot includes them
                        pipe.delete(key, conns_key)
                        if counts:
                            pipe.hset(key, mapping=counts)
                        if connections:
                            pipe.hset(conns_key, mapping=connections)
                    pipe.expire(key, int(WORKER_TTL * 2))
                    pipe.expire(conns_key, int(WORKER_TTL * 2))
                    pipe.zadd(workers_key, {self._worker: now})
                    pipe.zremrangebyscore(workers_key, "-inf", now - WORKER_TTL)
                    pipe.execute()
            except redis.RedisError as exc:
                self._stale = True
                log.warning("redis_heartbeat_failed error=%s", exc)
            self._stopping.wait(_HEARTBEAT_SECONDS)

    def leave(self) -> None:
        """Take this worker and its counts out of Redis (it is closing); best effort."""
        try:
            self._redis.zrem(self._keys.workers, self._worker)
            self._redis.delete(
                self._keys.of("subs", self._worker), self._keys.of("conns", self._worker)
            )
        except redis.RedisError:
            pass
