"""Server-sent events: one HTTP response that streams one topic's events (docs/rest-api.md "Messages over HTTP and server-sent events").

An SseStream is the broker's Subscriber for one `GET /topics/<name>/events`. The broker
calls it under its lock, so delivering is an append to the stream's own bounded queue and a
wake-up; the response generator, in the request's own greenlet (or thread), encodes and
writes. A slow client therefore only ever slows its own generator: when its queue is full
the oldest event is dropped, and the next message is preceded by an `event: dropped`.

Frames (https://html.spec.whatwg.org/multipage/server-sent-events.html):

    event: subscribed   data {"topic","seq","epoch","recovered"}   (first)
    id: <seq>  event: message   data <the message JSON, as in a WebSocket event>
    event: dropped      data {"topic","count","from_seq","to_seq"}
    event: topic_deleted / event: shutdown   data {"topic"}        (last)
    : ping                                                         (heartbeat comment)
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator

import orjson

from gateway import metrics, protocol
from gateway.brokers import Broker, Check, Event, Subscription
from gateway.transport import libraries
from gateway.transport.delivery import Holding, Losses
from gateway.transport.sockets import is_gevent_socket

log = logging.getLogger("gateway.sse")

HEARTBEAT = b": ping\n\n"
# Without gevent (the Flask dev server's threads) a waiting stream looks at its client's
# socket this often to notice that it went away; under gevent a watcher is told at once.
_PEER_POLL_SECONDS = 1.0
# Why a stream ends: the first reason wins.
TOPIC_DELETED, SHUTDOWN, CLIENT_GONE = "topic_deleted", "shutdown", "client_gone"
ACCESS_REVOKED = "access_revoked"


def encode(name: str, data: dict, event_id: int | None = None) -> bytes:
    """Return one SSE event: optional `id:`, `event:` and one `data:` line of JSON."""
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data))


def encode_message(event: Event) -> bytes:
    """Return the `message` SSE event of one published message, its `id:` being the seq."""
    return encode("message", protocol.message(event), event.seq)


class SseStream:
    """The Subscriber and the response body of one SSE client of one topic."""

    def __init__(
        self,
        broker: Broker,
        topic: str,
        queue_size: int,
        heartbeat_interval: float,
        sock: socket.socket | None = None,
        on_close: Callable[[SseStream], None] | None = None,
        stream_id: str | None = None,
        user_id: str = "",
    ) -> None:
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self.user_id = user_id
        self.topic = topic
        self._broker = broker
        self._queue_size = queue_size
        self._heartbeat = heartbeat_interval
        self._sock = sock
        self._on_close = on_close
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue: deque[Event] = deque()
        # While `subscribe` runs, live events wait here (as in Session) to follow the replay.
        self._holding = Holding()
        self._losses = Losses()
        self._end: str | None = None
        self._first: bytes = b""
        self._watcher = None
        self._closed = False
        self._started = time.monotonic()

    # Subscriber (called by the broker, under its lock: must not block) -----------------

    def deliver(self, event: Event) -> None:
        """Queue one live event, dropping the oldest queued one when the queue is full."""
        with self._lock:
            if self._end is not None:
                return
            if self._holding.hold(event):
                return
            self._enqueue(event)
        self._wake.set()

    def topic_deleted(self, topic: str) -> None:
        """End the stream, after what is queued, with `event: topic_deleted`."""
        self._finish(TOPIC_DELETED)

    def access_revoked(self, topic: str) -> None:
        """End the stream, after what is queued, with `event: access_revoked`."""
        self._finish(ACCESS_REVOKED)

    # Life cycle ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """End the stream, after what is queued, with `event: shutdown`."""
        self._finish(SHUTDOWN)

    def subscribe(
        self, since_seq: int | None, epoch: str | None, check: Check | None = None
    ) -> Subscription:
        """Subscribe; the replay goes out with `subscribed`, live events after it are queued.

        Raises what the broker raises (TopicNotFound, BrokerUnavailable) and what `check`
        raises (gateway.guards.access.Forbidden).
        """
        with self._lock:
            self._holding.begin(self.topic)
        try:
            subscription = self._broker.subscribe(
                self.topic, self, since_seq=since_seq, epoch=epoch, check=check
            )
        except BaseException:
            with self._lock:
                self._holding.cancel(self.topic)
            raise
        if since_seq is not None:
            metrics.resumed(subscription.recovered)
        body = {
            "topic": self.topic,
            "seq": subscription.seq,
            "epoch": subscription.epoch,
            "recovered": since_seq is not None and subscription.recovered,
        }
        # A fresh stream's `id:` makes a browser that reconnects resume from here; a resumed
        # one has none, so the browser keeps the Last-Event-ID it resumed from until the
        # replayed messages move it on.
        first = encode("subscribed", body, subscription.seq if since_seq is None else None)
        # The replay goes out with it, outside the queue and its bound: it is at most a ring,
        # and live events that pile up behind it must not push it out.
        self._first = first + b"".join(encode_message(event) for event in subscription.replay)
        with self._lock:
            self._holding.release(self.topic, subscription.seq, self._enqueue)
        self._wake.set()
        self._watch_peer()
        log.info(
            "sse_open stream=%s topic=%s since_seq=%s replayed=%d recovered=%s",
            self.stream_id,
            self.topic,
            since_seq,
            len(subscription.replay),
            body["recovered"],
        )
        return subscription

    def frames(self) -> Iterator[bytes]:
        """Yield the response body: `subscribed` and the replay, then live messages until the end."""
        try:
            yield self._first
            next_ping = time.monotonic() + self._heartbeat
            while True:
                timeout = self._wait_time(next_ping)
                self._wake.wait(timeout)
                chunk, end = self._take()
                if end == CLIENT_GONE or (self._watcher is None and self._peer_gone()):
                    return
                if self._heartbeat > 0 and time.monotonic() >= next_ping:
                    chunk += HEARTBEAT
                    next_ping = time.monotonic() + self._heartbeat
                if end is not None:
                    chunk += encode(end, {"topic": self.topic})
                if chunk:
                    yield chunk
                if end is not None:
                    return
        finally:
            self.close()

    def close(self, reason: str = CLIENT_GONE) -> None:
        """Unsubscribe and forget the stream, once; `reason` if it had not ended already."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._end is None:
                self._end = reason
            reason = self._end
        if self._watcher is not None:
            self._watcher.kill(block=False)
        try:
            self._broker.unsubscribe_all(self)
        except Exception:  # noqa: BLE001 - the broker logs its own faults; the client is gone
            log.warning("sse_unsubscribe_failed stream=%s", self.stream_id, exc_info=True)
        if self._on_close is not None:
            self._on_close(self)
        log.info(
            "sse_close stream=%s topic=%s reason=%s seconds=%.1f",
            self.stream_id,
            self.topic,
            reason,
            time.monotonic() - self._started,
        )

    def abort(self) -> None:
        """Cut the client's connection, so a generator stuck writing to it ends too."""
        self._finish(CLIENT_GONE)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    # Internals -------------------------------------------------------------------------

    def _wait_time(self, next_ping: float) -> float | None:
        """Seconds to sleep until a heartbeat is due or the client should be looked at."""
        waits = []
        if self._heartbeat > 0:
            waits.append(max(0.0, next_ping - time.monotonic()))
        if self._sock is not None and self._watcher is None:
            waits.append(_PEER_POLL_SECONDS)
        return min(waits, default=None)

    def _enqueue(self, event: Event) -> None:
        """Append under the lock; a full queue loses its oldest event, counted for the notice."""
        if len(self._queue) >= self._queue_size:
            self._losses.record(self.topic, self._queue.popleft().seq)
        self._queue.append(event)

    def _finish(self, reason: str) -> None:
        with self._lock:
            if self._end is None:
                self._end = reason
        self._wake.set()

    def _take(self) -> tuple[bytes, str | None]:
        """Encode everything queued (a dropped notice first) into one chunk; return its end."""
        with self._lock:
            self._wake.clear()
            events = list(self._queue)
            self._queue.clear()
            dropped = self._losses.take(self.topic)
            end = self._end
        parts = []
        if dropped is not None:
            notice = dict(zip(("count", "from_seq", "to_seq"), dropped, strict=True))
            parts.append(encode("dropped", {"topic": self.topic, **notice}))
        parts.extend(encode_message(event) for event in events)
        return b"".join(parts), end

    def _watch_peer(self) -> None:
        """Under gevent, notice at once when the client closes its side of the connection."""
        if self._sock is None or not is_gevent_socket(self._sock):
            return
        import gevent

        self._watcher = gevent.spawn(self._wait_for_peer)

    def _wait_for_peer(self) -> None:
        from gevent.socket import wait_read

        with contextlib.suppress(OSError):
            wait_read(self._sock.fileno())
        if self._peer_gone():
            self._finish(CLIENT_GONE)
        # Bytes from the client (a pipelined request) are not ours to read: stop watching,
        # and a vanished client is then found when a write to it fails.

    def _peer_gone(self) -> bool:
        """Tell, without blocking, whether the client has closed or reset the connection."""
        if self._sock is None:
            return False
        raw = libraries.raw_socket(self._sock)
        try:
            readable, _, _ = select.select([raw], [], [], 0)
            if not readable:
                return False
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True
