"""The pub/sub listener: the channels of this worker's topics, fanned out, gaps repaired.

A worker subscribes to a topic's channel once, when it first has a local subscriber, and
hands each event to its own connections through the broker's `Fanout`. Pub/sub loses what
is published while its connection is down: when a channel is subscribed again, or a seq
skips, the events in between are read back from the topic's ring, so a local subscriber
still gets each event once, in seq order.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from gateway.brokers.contract import (
    UNOBSERVED,
    BrokerUnavailable,
    Encoder,
    Event,
    Observer,
    run_sends,
)
from gateway.brokers.fanout import Fanout
from gateway.brokers.redis.access import AccessStore
from gateway.brokers.redis.counts import ClusterCounts
from gateway.brokers.redis.scripts import DELETED, REVOKED, REWIND, Keys, read_entry

log = logging.getLogger("gateway.broker")

_SUBSCRIBE_WAIT = 5.0
_BACKOFF_MAX = 5.0
# Messages Redis has already delivered that one burst handles before any socket is written.
_BURST = 512
# How often channels that no local subscriber follows any more are unsubscribed.
SWEEP_SECONDS = 5.0


class Listener:
    """Receive every channel this worker follows and deliver its events to local subscribers.

    `run` is the loop (the broker supervises it); only it touches the pub/sub connection.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker: str,
        lock: threading.Lock,
        fanout: Fanout,
        counts: ClusterCounts,
        access: AccessStore,
        encode: Encoder,
        stopping: threading.Event,
        observer: Observer = UNOBSERVED,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._lock = lock  # the broker's: it guards `fanout` and the state below
        self._fanout = fanout
        self._counts = counts
        self._access = access
        self._encode = encode
        self._stopping = stopping
        self._pubsub = client.pubsub()
        self._own_channel = keys.of("worker", worker)
        # Topics whose channel this worker listens to: set once Redis confirmed it.
        self._listening: dict[str, threading.Event] = {}
        self._last_seq: dict[str, int] = {}
        self._wanted: list[str] = []  # topics whose channel the listener should subscribe
        # Subscribes under way per topic (between listen_to and the fan-out registration):
        # their channel must not be swept.
        self._arriving: dict[str, int] = {}
        self._next_sweep = 0.0
        self._channels = keys.of("chan", "")  # every topic channel's name starts so
        # Socket writes made due by the burst being handled (_burst runs them at its end).
        self._sends: list = []
        # The events of the burst and the deliveries they made, for the observer.
        self._observer = observer
        self._events: list[Event] = []
        self.connected = False  # the listener holds a live pub/sub connection

    def listen_to(self, topic: str) -> None:
        """Make sure this worker receives the topic's channel before anyone subscribes.

        Only the listener touches the pub/sub connection (redis-py's PubSub is not safe to
        share): it is asked through a queue and woken by a message on its own channel. The
        caller calls `arrived(topic)` once its subscriber is registered (or has failed), so
        that the channel is not swept meanwhile.
        """
        with self._lock:
            self._arriving[topic] = self._arriving.get(topic, 0) + 1
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
            self.arrived(topic)
            raise BrokerUnavailable("redis did not confirm the channel subscription in time")

    def arrived(self, topic: str) -> None:
        """A subscribe that called `listen_to` is over: registered, or failed."""
        with self._lock:
            left = self._arriving.get(topic, 0) - 1
            if left > 0:
                self._arriving[topic] = left
            else:
                self._arriving.pop(topic, None)

    def _sweep(self) -> None:
        """Unsubscribe the channels that no local subscriber follows any more.

        Their events would only be read and dropped. A subscriber that comes back later
        subscribes the channel again and starts from the topic's seq then, as a first one does.
        """
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        with self._lock:
            idle = [
                topic
                for topic in self._listening
                if not self._fanout.count(topic) and not self._arriving.get(topic)
            ]
            for topic in idle:
                del self._listening[topic]
                self._last_seq.pop(topic, None)
        if idle:
            self._pubsub.unsubscribe(*(self._keys.of("chan", topic) for topic in idle))
            log.debug("redis_channels_unsubscribed count=%d", len(idle))

    def run(self) -> None:
        """Receive every subscribed channel; reconnect with capped backoff, repairing gaps."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                if not self._pubsub.subscribed:
                    # A channel of its own keeps the subscription open, so the listener
                    # always has something to block on, and Redis may be down at start-up.
                    self._pubsub.subscribe(self._own_channel)
                self._subscribe_wanted()
                self.connected = True
                message = self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._burst(message)
                if time.monotonic() >= self._next_sweep:
                    self._sweep()
            except Exception as exc:
                self.connected = False
                if self._stopping.is_set():
                    return  # close() shut the connection under us
                if not isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
                    log.exception("redis_listener_error")
                log.warning("redis_listener_disconnected error=%s retry_in=%.1fs", exc, backoff)
                self._counts.mark_stale()  # a restarted Redis may have lost them
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = 0.1

    def _burst(self, message: dict) -> None:
        """Handle `message` and whatever else Redis has delivered, then write to sockets once.

        Events are queued to every local subscriber first; the socket writes they make due
        run at the end, so a subscriber gets one write per burst instead of one per message
        (get_message with timeout 0 reads only what is already buffered or on the socket).
        """
        try:
            for _ in range(_BURST):
                self._handle(message)
                message = self._pubsub.get_message(timeout=0)
                if message is None:
                    break
        finally:
            sends, self._sends = self._sends, []
            run_sends(sends)
            if self._events:
                events, self._events = self._events, []
                with self._lock:
                    deliveries = self._fanout.take_delivered()
                self._observer.fanned_out(events, deliveries)

    def _handle(self, message: dict) -> None:
        channel = message["channel"].decode()
        if not channel.startswith(self._channels):
            return  # our own channel: a wake-up, handled by _subscribe_wanted
        topic = channel.removeprefix(self._channels)
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

    def close(self) -> None:
        """Close the pub/sub connection (`stopping` is set: `run` returns)."""
        self._pubsub.close()

    def _subscribe_wanted(self) -> None:
        with self._lock:
            wanted, self._wanted = self._wanted, []
        if not wanted:
            return
        try:
            self._pubsub.subscribe(*(self._keys.of("chan", topic) for topic in wanted))
        except Exception:
            with self._lock:
                self._wanted = wanted + self._wanted
            raise

    def _on_subscribed(self, topic: str) -> None:
        """A channel (re)subscription is confirmed: start from its seq, fill the gap, or rewind.

        After a Sentinel failover (replication is asynchronous) or a restart that lost data,
        Redis may hold less of the topic than this worker delivered: a lower seq (`_rewind`
        moves the topic to a new epoch, its seq raised to what was delivered), or no topic at
        all (deleted meanwhile, or its creation lost: its subscribers here are told it is
        gone, as for a deletion). If Redis cannot be asked, the channel is subscribed again,
        and its confirmation asks again.
        """
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(self._keys.of("seq", topic))
            pipe.hget(self._keys.topics, topic)
            seq, epoch = pipe.execute()
            current = int(seq or 0)
            with self._lock:
                last = self._last_seq.get(topic)
                ready = self._listening.get(topic)
            if last is None:
                with self._lock:
                    self._last_seq[topic] = current
            elif current > last:
                log.info("redis_resubscribed topic=%s missed=%d", topic, current - last)
                self._repair(topic, last, current + 1)
            elif last and epoch is None:
                log.warning("redis_topic_lost topic=%s last=%d", topic, last)
                self._on_notice(topic, DELETED)
            elif current < last:
                self._rewind(topic, epoch.decode(), current, last)
        except (redis.ConnectionError, redis.TimeoutError):
            with self._lock:
                self._wanted.append(topic)
            raise
        if ready is not None:
            ready.set()

    def _rewind(self, topic: str, epoch: str, current: int, last: int) -> None:
        """Move a topic whose seq went back (`current` < `last`) to a new epoch, seq >= `last`.

        Live subscribers here lose nothing they were sent, and the next event they get has a
        seq above `last`: none they already had is handed out again. A resume from the old
        epoch gets `recovered: false` (the ring lost what Redis lost). Compare-and-set on
        the epoch read: if another worker moved the topic meanwhile, read it again, and
        move it once more only if its seq is still below what this worker delivered.
        """
        rewind = self._redis.register_script(REWIND)
        keys = [self._keys.topics, self._keys.of("seq", topic)]
        for _ in range(5):
            moved, now_epoch, now_seq = rewind(
                keys=keys, args=[topic, epoch, uuid.uuid4().hex, last]
            )
            if moved:
                self._access.forget(topic)  # its cached epoch is the old one
                log.warning("redis_topic_rewound topic=%s from=%d to=%d", topic, current, now_seq)
                return
            if not now_epoch:
                return  # deleted meanwhile: the channel brings the notice
            if now_seq >= last:
                return  # another worker moved it (or it got past `last`) meanwhile
            epoch, current = now_epoch.decode(), now_seq
        log.warning("redis_topic_rewind_gave_up topic=%s from=%d to=%d", topic, current, last)

    def _on_notice(self, topic: str, data: bytes) -> None:
        """A channel message that is not an event: deletion, or a change of access."""
        self._access.forget(topic)
        if data == DELETED:
            # Counts first: once a subscriber hears of the deletion, /health agrees.
            self._counts.forget_topic(topic)
            with self._lock:
                self._sends += self._fanout.drop_topic(topic)
                self._last_seq[topic] = 0
        elif data.startswith(REVOKED):
            user = data[len(REVOKED) :].decode()
            with self._lock:
                sends = self._fanout.revoke(topic, user)
            self._sends += sends
            if sends:
                log.info(
                    "access_revoked topic=%s user=%s subscriptions=%d", topic, user, len(sends)
                )
        # b"access": the members changed; forgetting the copy was all there was to do.

    def _on_message(self, topic: str, data: bytes) -> None:
        if not data[:1].isdigit():
            self._on_notice(topic, data)
            return
        seq = int(data.split(b":", 1)[0])
        with self._lock:
            if topic not in self._listening:
                return  # a channel being unsubscribed (swept): nobody here follows it
            last = self._last_seq.get(topic, 0)
        if seq <= last:
            return  # already delivered (a repair got it first)
        if seq > last + 1:
            self._repair(topic, last, seq)
        self._dispatch(read_entry(topic, data))

    def _repair(self, topic: str, last: int, upto: int) -> None:
        """Deliver the ring's events after `last` and before `upto` that the channel lost."""
        entries = self._redis.lrange(self._keys.of("ring", topic), 0, -1)
        events = [read_entry(topic, e) for e in entries]
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
            self._sends += self._fanout.deliver(event)
        self._events.append(event)
