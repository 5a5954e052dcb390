"""RedisBroker: topics, history and seq in Redis, fan-out local to each worker (SPEC §7).

Any number of gunicorn workers and hosts share one Redis. A Lua script gives each message
its seq, appends it to the topic's history ring and publishes it on the topic's channel in
one atomic step, so every worker receives one order. Each worker subscribes to a topic's
channel once, when it first has a local subscriber, and fans events out to its own
connections through the same `Fanout` as the memory broker.

Keys, under a prefix (default `gw`):
  {p}:topics        hash  name -> creation id (its presence is the topic's existence)
  {p}:owners        hash  name -> id of the user who created it
  {p}:owned         hash  user id -> topics that user created
  {p}:seq:{name}    int   the topic's last seq (= messages published since creation)
  {p}:ring:{name}   list  the last stored messages, "seq:body", at most RING_BUFFER_SIZE
                          of them and RING_BUFFER_BYTES together
  {p}:ringbytes:{name}  int  the bytes held by the ring
  {p}:chan:{name}   channel the same "seq:body" entries, and "deleted" on deletion
  {p}:workers       zset  worker id -> last heartbeat (unix seconds)
  {p}:subs:{id}     hash  topic -> that worker's local subscriber count (expires)
  {p}:conns:{id}    hash  user id -> that worker's open WebSockets and SSE streams (expires)
  {p}:idem:{n}:{name}:{n}:{user}:{key}  an idempotency key (lengths first, so names with
                          ':' cannot collide) -> "epoch|seq:head" without payload (expires)
  {p}:idemkeys:{name}   list  the topic's idempotency keys, oldest first, capped
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from gateway.broker import (
    IDEMPOTENCY_KEYS_PER_TOPIC,
    IDEMPOTENCY_SECONDS,
    Broker,
    BrokerUnavailable,
    Encoder,
    Event,
    History,
    LimitExceeded,
    Quotas,
    Subscriber,
    Subscription,
    TopicExists,
    TopicInfo,
    TopicNotFound,
    resume,
)
from gateway.fanout import Fanout
from gateway.supervisor import Loop

try:
    import redis
except ImportError as exc:  # pragma: no cover - redis is in requirements.txt
    raise ImportError(
        "BROKER_URL is a redis:// URL but redis is missing: pip install redis"
    ) from exc

log = logging.getLogger("gateway.broker")

Packer = Callable[[str, bytes, float], bytes]
Unpacker = Callable[[bytes], tuple[str, bytes, float]]

_DELETED = b"deleted"
# Redis connections per worker (the listener holds one), and how long a call waits for one.
POOL_SIZE = 32
POOL_TIMEOUT = 5.0
# A worker whose heartbeat is older than this no longer counts in /health and /stats.
WORKER_TTL = 15.0
_HEARTBEAT_SECONDS = 5.0
_SUBSCRIBE_WAIT = 5.0
_BACKOFF_MAX = 5.0

# KEYS: topics, seq, ring, chan, idem, ringbytes, idemkeys
# ARGV: name, body, ring size, idempotency ttl ('' = none), ring bytes, keys kept, head
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], ARGV[1])
if not epoch then return {-1, ''} end
local idem = ARGV[4] ~= ''
if idem then
  local prev = redis.call('GET', KEYS[5])
  if prev and string.sub(prev, 1, #epoch + 1) == epoch .. '|' then
    return {0, string.sub(prev, #epoch + 2)}
  end
end
local seq = redis.call('INCR', KEYS[2])
local entry = seq .. ':' .. ARGV[2]
local keep = tonumber(ARGV[3])
if keep > 0 then
  local most = tonumber(ARGV[5])
  if redis.call('EXISTS', KEYS[6]) == 0 then
    -- A ring without its byte count (kept by an older gateway): count it once.
    local held = 0
    for _, old in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do held = held + #old end
    redis.call('SET', KEYS[6], held)
  end
  redis.call('RPUSH', KEYS[3], entry)
  local size = redis.call('INCRBY', KEYS[6], #entry)
  local count = redis.call('LLEN', KEYS[3])
  while count > 0 and (count > keep or (most > 0 and size > most)) do
    size = redis.call('DECRBY', KEYS[6], #redis.call('LPOP', KEYS[3]))
    count = count - 1
  end
end
if idem then
  local ttl = tonumber(ARGV[4])
  redis.call('SET', KEYS[5], epoch .. '|' .. seq .. ':' .. ARGV[7], 'EX', ttl)
  -- A key used again after it expired is listed once, at the newest end.
  redis.call('LREM', KEYS[7], 0, KEYS[5])
  redis.call('RPUSH', KEYS[7], KEYS[5])
  if redis.call('LLEN', KEYS[7]) > tonumber(ARGV[6]) then
    redis.call('DEL', redis.call('LPOP', KEYS[7]))
  end
  redis.call('EXPIRE', KEYS[7], ttl)
end
redis.call('PUBLISH', KEYS[4], entry)
return {seq, entry}
"""

# KEYS: topics, owners, owned, seq, ring, ringbytes; ARGV: name, epoch, owner, max, per user
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local most = tonumber(ARGV[4])
if most > 0 and redis.call('HLEN', KEYS[1]) >= most then return -1 end
local per_user = tonumber(ARGV[5])
if per_user > 0 and tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0') >= per_user then
  return -2
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
"""

# KEYS: topics, seq, ring, chan, owners, owned, ringbytes, idemkeys; ARGV: name
_DELETE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local owner = redis.call('HGET', KEYS[5], ARGV[1])
if owner then
  redis.call('HDEL', KEYS[5], ARGV[1])
  if redis.call('HINCRBY', KEYS[6], owner, -1) <= 0 then redis.call('HDEL', KEYS[6], owner) end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[7], KEYS[8])
redis.call('PUBLISH', KEYS[4], 'deleted')
return 1
"""

# KEYS: this worker's connection counts, then every other live worker's; ARGV: user, limit, ttl
_CLAIM = """
local limit = tonumber(ARGV[2])
local total = 0
for i = 1, #KEYS do total = total + tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0') end
if total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


def _unavailable(func):
    """Turn a Redis connection failure into BrokerUnavailable."""

    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


class RedisBroker(Broker):
    """A broker whose topics, rings and seqs live in Redis, shared by every worker."""

    def __init__(
        self,
        url: str,
        ring_size: int,
        encode: Encoder,
        pack: Packer,
        unpack: Unpacker,
        prefix: str = "gw",
        quotas: Quotas | None = None,
    ) -> None:
        self._ring_size = ring_size
        self._quotas = quotas or Quotas()
        self._encode = encode
        self._pack = pack
        self._unpack = unpack
        self._p = prefix
        self._worker = uuid.uuid4().hex[:12]
        # A bounded pool that makes callers wait: a thousand clients subscribing at once
        # must queue for a few connections, not open a thousand (redis-py's default pool
        # refuses past 100 with "Too many connections").
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=POOL_TIMEOUT,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._create_script = self._redis.register_script(_CREATE)
        self._delete_script = self._redis.register_script(_DELETE)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._lock = threading.Lock()
        self._fanout = Fanout()
        # Topics whose channel this worker listens to: set once Redis confirmed it.
        self._listening: dict[str, threading.Event] = {}
        self._last_seq: dict[str, int] = {}
        # Set when an increment of this worker's counts in Redis may have been lost.
        self._counts_stale = True
        self._stopping = threading.Event()
        self._pubsub = self._redis.pubsub()
        self._own_channel = f"{prefix}:worker:{self._worker}"
        self._wanted: list[str] = []  # topics whose channel the listener should subscribe
        self._connected = False  # the listener holds a live pub/sub connection
        self._connections: dict[str, int] = {}  # open connections per user, this worker
        # Orders claims, releases and the heartbeat's rewrite of this worker's connection
        # counts in Redis. Unlike `_lock`, it is held across a Redis call: it only ever
        # makes one connection's upgrade wait for another's.
        self._conns_lock = threading.Lock()
        self._listener = Loop("redis-listener", self._listen, self._stopping).start()
        self._beat = Loop("redis-heartbeat", self._heartbeat, self._stopping).start()

    # Keys ------------------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> str:
        return f"{self._p}:{kind}:{name}"

    @property
    def _topics_key(self) -> str:
        return f"{self._p}:topics"

    @property
    def _workers_key(self) -> str:
        return f"{self._p}:workers"

    # Broker ------------------------------------------------------------------------------------

    @_unavailable
    def create_topic(self, name: str, owner: str | None = None) -> None:
        # A name used before starts from seq 1 (deletion removed these, but be certain).
        keys = [
            self._topics_key,
            self._key("owners", ""),
            self._key("owned", ""),
            self._key("seq", name),
            self._key("ring", name),
            self._key("ringbytes", name),
        ]
        quotas = self._quotas
        args = [name, uuid.uuid4().hex, owner or "", quotas.max_topics, quotas.max_topics_per_user]
        created = self._create_script(keys=keys, args=args)
        if created == 0:
            raise TopicExists(name)
        if created == -1:
            raise LimitExceeded(f"the gateway holds its maximum of {quotas.max_topics} topics")
        if created == -2:
            raise LimitExceeded(
                f"you already own the maximum of {quotas.max_topics_per_user} topics"
            )

    @_unavailable
    def delete_topic(self, name: str) -> None:
        keys = [
            self._topics_key,
            self._key("seq", name),
            self._key("ring", name),
            self._key("chan", name),
            self._key("owners", ""),
            self._key("owned", ""),
            self._key("ringbytes", name),
            self._key("idemkeys", name),
        ]
        if not self._delete_script(keys=keys, args=[name]):
            raise TopicNotFound(name)

    @_unavailable
    def topics(self) -> list[TopicInfo]:
        names = sorted(n.decode() for n in self._redis.hkeys(self._topics_key))
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.get(self._key("seq", name))
        pipe.hmget(self._key("owners", ""), names)
        *seqs, owners = pipe.execute()
        counts = self._cluster_counts()
        return [
            TopicInfo(name, counts.get(name, 0), int(seq or 0), (owner or b"").decode() or None)
            for name, seq, owner in zip(names, seqs, owners, strict=True)
        ]

    @_unavailable
    def publish(
        self,
        topic: str,
        message_id: str,
        payload: bytes,
        idempotency_key: str | None = None,
        publisher: str | None = None,
    ) -> Event:
        publisher = publisher or ""
        idem = f"{len(topic)}:{topic}:{len(publisher)}:{publisher}:{idempotency_key or ''}"
        keys = [
            self._topics_key,
            self._key("seq", topic),
            self._key("ring", topic),
            self._key("chan", topic),
            self._key("idem", idem),
            self._key("ringbytes", topic),
            self._key("idemkeys", topic),
        ]
        body = self._pack(message_id, payload, time.time())
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
            self._quotas.ring_bytes,
            IDEMPOTENCY_KEYS_PER_TOPIC,
            head,
        ]
        seq, entry = self._publish_script(keys=keys, args=args)
        if seq < 0:
            raise TopicNotFound(topic)
        # Local subscribers get the event from the channel, in seq order with everyone else;
        # a repeated idempotency key returns the first publish's entry and sends nothing.
        return self._event(topic, entry)

    @_unavailable
    def subscribe(
        self,
        topic: str,
        subscriber: Subscriber,
        last_n: int = 0,
        since_seq: int | None = None,
        epoch: str | None = None,
    ) -> Subscription:
        if not self._redis.hexists(self._topics_key, topic):
            raise TopicNotFound(topic)
        self._listen_to(topic)
        with self._lock:
            added = self._fanout.add(topic, subscriber)
        if not added:
            seq, current_epoch, _ = self._snapshot(topic, 0)
            return Subscription([], seq, current_epoch, since_seq is not None)
        self._count(topic, +1)
        # Registered first, snapshot second: nothing published in between is missed, and
        # what the channel brings late at or below the snapshot's seq is skipped (floor).
        # The ring never holds more than ring_size: a larger last_n asks for all of it.
        depth = self._ring_size if since_seq is not None else min(last_n, self._ring_size)
        try:
            seq, current_epoch, ring = self._snapshot(topic, depth)
        except Exception:
            # Not subscribed after all: a retry must find no half-made subscription.
            with self._lock:
                removed = self._fanout.remove(topic, subscriber)
            if removed:
                self._count(topic, -1)
            raise
        with self._lock:
            self._fanout.set_floor(topic, subscriber, seq)
        if since_seq is not None:
            same = epoch is None or epoch == current_epoch
            replay, recovered = resume(ring, since_seq, seq, same)
            return Subscription(replay, seq, current_epoch, recovered)
        return Subscription(ring, seq, current_epoch)

    @_unavailable
    def history(
        self, topic: str, since_seq: int = 0, limit: int = 100, epoch: str | None = None
    ) -> History:
        seq, current_epoch, ring = self._snapshot(topic, self._ring_size)
        if not current_epoch:
            raise TopicNotFound(topic)
        same = epoch is None or epoch == current_epoch
        events, complete = resume(ring, since_seq, seq, same)
        return History(events[:limit], seq, current_epoch, complete)

    def _snapshot(self, topic: str, depth: int) -> tuple[int, str, list[Event]]:
        """Read a topic's seq, epoch and last `depth` ring events in one transaction."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._key("seq", topic))
        pipe.hget(self._topics_key, topic)
        pipe.lrange(self._key("ring", topic), -depth, -1)
        seq, epoch, entries = pipe.execute()
        ring = [self._event(topic, entry) for entry in entries] if depth else []
        return int(seq or 0), (epoch or b"").decode(), ring

    @_unavailable
    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        if not self._redis.hexists(self._topics_key, topic):
            raise TopicNotFound(topic)
        with self._lock:
            removed = self._fanout.remove(topic, subscriber)
        if removed:
            self._count(topic, -1)

    def following(self, subscriber: Subscriber) -> frozenset[str]:
        with self._lock:
            return self._fanout.topics_of(subscriber)

    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        with self._lock:
            topics = self._fanout.remove_all(subscriber)
        for topic in topics:
            self._count(topic, -1)

    @_unavailable
    def subscriber_count(self) -> int:
        return sum(self._cluster_counts().values())

    @_unavailable
    def claim_connection(self, user: str, limit: int) -> bool:
        if not limit:
            return True  # not counted: release_connection finds nothing to release
        others = self._alive_workers() - {self._worker}
        keys = [self._key("conns", w) for w in (self._worker, *sorted(others))]
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

    def release_connection(self, user: str) -> None:
        try:
            with self._conns_lock:
                if not self._forget_connection(user):
                    return  # never counted (no limit)
                self._redis.hincrby(self._key("conns", self._worker), user, -1)
        except redis.RedisError as exc:
            self._counts_stale = True  # the heartbeat rewrites the map from the local truth
            log.warning("redis_count_failed what=connections error=%s", exc)

    def problems(self) -> dict[str, str]:
        found = {}
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            found["broker"] = f"redis unreachable: {exc}"
        if not self._listener.running:
            found["listener"] = "the Redis listener stopped and is being restarted"
        elif not self._connected:
            found["listener"] = "the Redis listener is reconnecting"
        return found

    def close(self) -> None:
        self._stopping.set()
        try:
            self._redis.zrem(self._workers_key, self._worker)
            self._redis.delete(self._key("subs", self._worker), self._key("conns", self._worker))
        except redis.RedisError:
            pass
        self._pubsub.close()
        self._redis.close()

    # Subscriber counts across workers ----------------------------------------------------------

    def _count(self, topic: str, delta: int) -> None:
        # If this fails, the next heartbeat rewrites the whole map from the local truth.
        try:
            self._redis.hincrby(self._key("subs", self._worker), topic, delta)
        except redis.RedisError as exc:
            self._counts_stale = True
            log.warning("redis_count_failed topic=%s error=%s", topic, exc)

    def _alive_workers(self) -> set[str]:
        alive = self._redis.zrangebyscore(self._workers_key, time.time() - WORKER_TTL, "+inf")
        return {w.decode() for w in alive} | {self._worker}

    def _cluster_counts(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for worker in self._alive_workers():
            pipe.hgetall(self._key("subs", worker))
        totals: dict[str, int] = {}
        for counts in pipe.execute():
            for name, count in counts.items():
                topic = name.decode()
                totals[topic] = totals.get(topic, 0) + int(count)
        return {topic: count for topic, count in totals.items() if count > 0}

    def _heartbeat(self) -> None:
        """Say this worker is alive and keep its counts from expiring; forget dead workers.

        Counts move by HINCRBY as subscribers come and go; the whole map is rewritten from
        the local truth only after an increment failed (Redis was away), since a rewrite
        racing a concurrent increment could count one subscriber twice for a beat.
        """
        key = self._key("subs", self._worker)
        conns_key = self._key("conns", self._worker)
        while not self._stopping.is_set():
            now = time.time()
            try:
                pipe = self._redis.pipeline(transaction=True)
                # No claim or release may run between reading the local counts and
                # writing them: it would be lost or counted twice.
                with self._conns_lock:
                    if self._counts_stale:
                        self._counts_stale = False
                        with self._lock:
                            counts = self._fanout.counts()
                            connections = dict(self._connections)
                        pipe.delete(key, conns_key)
                        if counts:
                            pipe.hset(key, mapping=counts)
                        if connections:
                            pipe.hset(conns_key, mapping=connections)
                    pipe.expire(key, int(WORKER_TTL * 2))
                    pipe.expire(conns_key, int(WORKER_TTL * 2))
                    pipe.zadd(self._workers_key, {self._worker: now})
                    pipe.zremrangebyscore(self._workers_key, "-inf", now - WORKER_TTL)
                    pipe.execute()
            except redis.RedisError as exc:
                self._counts_stale = True
                log.warning("redis_heartbeat_failed error=%s", exc)
            self._stopping.wait(_HEARTBEAT_SECONDS)

    # Channel listener --------------------------------------------------------------------------

    def _listen_to(self, topic: str) -> None:
        """Make sure this worker receives the topic's channel before anyone subscribes.

        Only the listener touches the pub/sub connection (redis-py's PubSub is not safe to
        share): it is asked through a queue and woken by a message on its own channel.
        """
        with self._lock:
            ready = self._listening.get(topic)
            if ready is None:
                ready = self._listening[topic] = threading.Event()
                self._wanted.append(topic)
                wake = True
            else:
                wake = False
        if wake:
            self._redis.publish(self._own_channel, b"wake")
        if not ready.wait(_SUBSCRIBE_WAIT):
            raise BrokerUnavailable("redis did not confirm the channel subscription in time")

    def _listen(self) -> None:
        """Receive every subscribed channel; reconnect with capped backoff, repairing gaps."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                if not self._pubsub.subscribed:
                    # A channel of its own keeps the subscription open, so the listener
                    # always has something to block on, and Redis may be down at start-up.
                    self._pubsub.subscribe(self._own_channel)
                self._subscribe_wanted()
                self._connected = True
                message = self._pubsub.get_message(timeout=1.0)
            except Exception as exc:
                self._connected = False
                if self._stopping.is_set():
                    return  # close() shut the connection under us
                if not isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
                    log.exception("redis_listener_error")
                log.warning("redis_listener_disconnected error=%s retry_in=%.1fs", exc, backoff)
                self._counts_stale = True  # a restarted Redis may have lost them
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = 0.1
            if message is None:
                continue
            channel = message["channel"].decode()
            if not channel.startswith(self._key("chan", "")):
                continue  # our own channel: a wake-up, handled by _subscribe_wanted
            topic = channel.removeprefix(self._key("chan", ""))
            try:
                if message["type"] == "subscribe":
                    self._on_subscribed(topic)
                elif message["type"] == "message":
                    self._on_message(topic, message["data"])
            except redis.RedisError as exc:
                log.warning("redis_listener_failed topic=%s error=%s", topic, exc)
            except Exception:
                # One bad entry must not silence the worker: log it and go on with the next.
                log.exception("redis_listener_bad_message topic=%s", topic)

    def _subscribe_wanted(self) -> None:
        with self._lock:
            wanted, self._wanted = self._wanted, []
        if not wanted:
            return
        try:
            self._pubsub.subscribe(*(self._key("chan", topic) for topic in wanted))
        except Exception:
            with self._lock:
                self._wanted = wanted + self._wanted
            raise

    def _on_subscribed(self, topic: str) -> None:
        """A channel (re)subscription is confirmed: start from its seq, or fill the gap."""
        current = int(self._redis.get(self._key("seq", topic)) or 0)
        with self._lock:
            last = self._last_seq.get(topic)
            ready = self._listening.get(topic)
        if last is None:
            with self._lock:
                self._last_seq[topic] = current
        elif current > last:
            log.info("redis_resubscribed topic=%s missed=%d", topic, current - last)
            self._repair(topic, last, current + 1)
        if ready is not None:
            ready.set()

    def _on_message(self, topic: str, data: bytes) -> None:
        if data == _DELETED:
            # Counts first: once a subscriber hears of the deletion, /health agrees.
            self._redis.hdel(self._key("subs", self._worker), topic)
            with self._lock:
                self._fanout.drop_topic(topic)
                self._last_seq[topic] = 0
            return
        seq = int(data.split(b":", 1)[0])
        with self._lock:
            last = self._last_seq.get(topic, 0)
        if seq <= last:
            return  # already delivered (a repair got it first)
        if seq > last + 1:
            self._repair(topic, last, seq)
        self._dispatch(self._event(topic, data))

    def _repair(self, topic: str, last: int, upto: int) -> None:
        """Deliver the ring's events after `last` and before `upto` that the channel lost."""
        entries = self._redis.lrange(self._key("ring", topic), 0, -1)
        events = [self._event(topic, e) for e in entries]
        missing = [e for e in events if last < e.seq < upto]
        lost = (upto - 1 - last) - len(missing)
        if lost:
            log.warning("redis_gap_unrepaired topic=%s lost=%d", topic, lost)
        for event in missing:
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        # Framed here, once per event per worker: replays, history pages and a publisher's
        # own return value are read back from storage but never sent as these bytes.
        event.wire = self._encode(event)
        with self._lock:
            if event.seq <= self._last_seq.get(event.topic, 0):
                return
            self._last_seq[event.topic] = event.seq
            self._fanout.deliver(event)

    def _event(self, topic: str, entry: bytes) -> Event:
        seq, body = entry.split(b":", 1)
        message_id, payload, timestamp = self._unpack(body)
        return Event(topic, message_id, payload, int(seq), timestamp)
