"""A connection's outbound side: one bounded queue, one writer at a time, whole frames.

docs/delivery.md: events beyond `queue_size` drop the oldest *event* (control frames are never
dropped); the next event of a topic that lost events is preceded by one `info`/`dropped`
notice; a socket that accepts no bytes for `write_timeout` seconds is a slow consumer and
is closed with 4008. Only the outbox writes to the socket after the handshake, and always
whole frames (docs/decisions.md: simple-websocket's own `send` ignores partial writes).

How bytes go out. Frames are queued and flushed with non-blocking sends, with no greenlet
switch per delivery. Under gevent the first frame queued in an event-loop tick is flushed
at once (a lone event leaves without delay); frames queued after it in the same tick wait
for one flush scheduled as a loop callback, so a burst leaves in one `send`. Under real
threads (the Flask dev server) every push flushes at once in the caller. Only when the kernel will not take
everything does a writer start: it owns the socket, waits for it with a deadline, and ends
when the queue is empty. An idle connection has no writer at all.

The lock matters only under real threads; under gevent it is a no-op (`Sender.lock`), which
holds because no critical section below blocks: keep it that way.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable

from gateway import metrics, protocol
from gateway.transport import wsframes
from gateway.transport.delivery import Losses
from gateway.transport.sockets import Sender

log = logging.getLogger("gateway.ws")

OPEN, CLOSING, CLOSED = "open", "closing", "closed"
# When a push flushes (Outbox._claim_flush).
_NOW, _SOON = "now", "soon"

# Frames coalesced into one socket write at most (a few hundred typical events).
_BATCH_BYTES = 256 * 1024
# How long a server-initiated close waits for the client's close reply before cutting TCP.
_CLOSE_REPLY_SECONDS = 3.0
# How long a closing connection reads what the client still sends before the server closes.
_LINGER_SECONDS = 2.0
# Best-effort budget for the SLOW_CONSUMER error and 4008 close of a stuck socket.
_SLOW_GOODBYE_SECONDS = 1.0


class WriteTimeout(Exception):
    """The socket accepted no bytes for the whole write timeout."""

    def __init__(self, unsent: bytes = b"") -> None:
        super().__init__("write timed out")
        self.unsent = unsent


class Outbox:
    """The bounded outbound queue of one WebSocket connection and the socket's only writer."""

    def __init__(self, sock, conn_id: str, queue_size: int, write_timeout: float) -> None:
        self.conn_id = conn_id
        self._sock = sock
        self._sender = Sender(sock)
        self._queue_size = queue_size
        # Control frames are never dropped, so a client that floods requests without
        # reading the replies is cut off here instead of growing memory without bound.
        self._control_limit = max(1000, 10 * queue_size)
        self._write_timeout = write_timeout
        self._lock = self._sender.lock()
        # (topic, seq, frame) for events; (None, 0, frame) for control frames.
        self._frames: deque[tuple[str | None, int, bytes]] = deque()
        self._events = 0
        # Per topic, events dropped since the last notice.
        self._losses = Losses()
        self._state = OPEN
        self._close_queued = False
        self._flush_scheduled = False
        self._direct_tick = -1  # the event-loop tick of the last flush done at once
        self._writer = None  # the backlog writer while one runs
        self._peer_closed = False

    @property
    def is_open(self) -> bool:
        """Tell whether frames are still accepted."""
        return self._state is OPEN

    def push_event(self, topic: str, seq: int, frame: bytes) -> None:
        """Queue an event frame, dropping the oldest queued event if the queue is full."""
        send = self.queue_event(topic, seq, frame)
        if send is not None:
            send()

    def queue_event(self, topic: str, seq: int, frame: bytes) -> Callable[[], None] | None:
        """Queue an event frame without touching the socket; return the write due now, if any.

        For a broker, which calls with its lock held and runs the write after releasing it.
        """
        with self._lock:
            if self._state is not OPEN:
                return None
            if self._events >= self._queue_size:
                self._drop_oldest_event()
            self._frames.append((topic, seq, frame))
            self._events += 1
            flush = self._claim_flush()
        return self._due(flush)

    def push(self, frame: bytes) -> None:
        """Queue a control frame (ack, error, pong, info); these are never dropped."""
        send = self.queue(frame)
        if send is not None:
            send()

    def queue(self, frame: bytes) -> Callable[[], None] | None:
        """Queue a control frame without touching the socket; return the write due now."""
        with self._lock:
            if self._state is not OPEN:
                return None
            self._push_control(frame)
            flush = self._claim_flush()
        return self._due(flush)

    def push_raw(self, data: bytes, closing: bool = False) -> None:
        """Queue protocol bytes from the WebSocket library (a pong, or the close reply).

        Pongs count against the same bound as our own replies; the close reply
        (`closing`) is let through while the outbox closes.
        """
        with self._lock:
            if self._close_queued or self._state is CLOSED:
                return
            if closing:
                self._queue_last(data)
            elif self._state is OPEN:
                self._push_control(data)
            else:
                return
            flush = self._claim_flush()
        self._start_flush(flush)

    def close(self, code: int, reason: str, notice: bytes | None = None) -> None:
        """Queue an optional last notice and a close frame; later frames are refused."""
        with self._lock:
            if self._state is not OPEN:
                return
            self._queue_close(notice, code, reason)
            flush = self._claim_flush()
        self._start_flush(flush)

    def peer_closed(self) -> None:
        """Record that the reading side has ended (close reply received or socket gone)."""
        self._peer_closed = True

    def finish(self, timeout: float) -> None:
        """Write what is queued (the library's close reply included), then let go."""
        with self._lock:
            if self._state is OPEN:
                self._state = CLOSING
        self._flush()
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
            if self._writer is not None:
                self._cut()
                writer.join(1.0)
        self._linger()

    def abort(self) -> None:
        """Cut the connection now, whatever is still queued."""
        with self._lock:
            self._state = CLOSED
            self._frames.clear()
        self._cut()

    def pending(self) -> int:
        """Return the number of frames waiting to be written."""
        return len(self._frames)

    # Queue bookkeeping (called with the lock held) ---------------------------------------

    def _start_flush(self, flush: object) -> None:
        """Carry out what `_claim_flush` decided (called without the lock)."""
        send = self._due(flush)
        if send is not None:
            send()

    def _due(self, flush: object) -> Callable[[], None] | None:
        """Return the socket write `_claim_flush` decided on, for the caller to run, or None.

        Nothing here touches the socket: a broker calls with its lock held, and runs the
        returned writes once it has released it (docs/architecture.md, "The lock rule").
        A write due at the end of the tick (gevent) is scheduled here instead.
        """
        if flush is _NOW:
            return self._flush
        if flush is _SOON:
            return self._sender.soon(self._flush)
        return None

    def _claim_flush(self) -> object:
        """Decide when what was just queued is flushed: _NOW, _SOON, or None (already due).

        The first flush of an event-loop tick happens at once, so a lone event leaves with
        no deferral; frames queued after it in the same tick wait for one flush at the end
        of the tick, so bursts still leave in one send per connection.
        """
        if self._flush_scheduled or self._writer is not None:
            return None
        tick = self._sender.tick()
        if tick is not None and tick != self._direct_tick:
            self._direct_tick = tick
            return _NOW
        self._flush_scheduled = True
        return _SOON

    def _push_control(self, frame: bytes) -> None:
        """Queue a reply, or close a client that lets too many go unread (lock held)."""
        if len(self._frames) - self._events >= self._control_limit:
            log.warning("slow_consumer conn=%s reason=unread_replies", self.conn_id)
            metrics.slow_consumer_closed()
            error = protocol.error(protocol.SLOW_CONSUMER, "too many unread replies")
            self._queue_close(wsframes.text(error), 4008, "slow consumer")
        else:
            self._frames.append((None, 0, frame))

    def _queue_close(self, notice: bytes | None, code: int, reason: str) -> None:
        if notice is not None:
            self._frames.append((None, 0, notice))
        self._queue_last(wsframes.close(code, reason))

    def _queue_last(self, close_frame: bytes) -> None:
        """Queue a close frame (ours or the reply to the client's): nothing may follow it."""
        self._frames.append((None, 0, close_frame))
        self._close_queued = True
        if self._state is OPEN:
            self._state = CLOSING

    def _drop_oldest_event(self) -> None:
        for index, (topic, seq, _) in enumerate(self._frames):
            if topic is not None:
                del self._frames[index]
                self._events -= 1
                self._losses.record(topic, seq)
                return

    def _take_batch(self) -> bytes:
        """Pop frames up to the batch budget, placing drop notices before their topic's event."""
        batch: list[bytes] = []
        size = 0
        frames = self._frames
        while frames and size < _BATCH_BYTES:
            topic, _, frame = frames.popleft()
            if topic is not None:
                self._events -= 1
                if self._losses and (lost := self._losses.take(topic)):
                    batch.append(wsframes.text(protocol.dropped(topic, *lost)))
            batch.append(frame)
            size += len(frame)
        if not frames and self._losses and not self._close_queued:
            for topic, *lost in self._losses.take_all():
                batch.append(wsframes.text(protocol.dropped(topic, *lost)))
        return batch[0] if len(batch) == 1 else b"".join(batch)

    def _drained(self) -> None:
        """Everything queued is on the wire: a closing outbox is now closed."""
        if self._state is not CLOSING:
            return
        self._state = CLOSED
        if self._close_queued:
            self._sender.later(_CLOSE_REPLY_SECONDS, self._cut_unless_peer_closed)

    # Writing -------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send what is queued without blocking; start the writer for what does not fit."""
        with self._lock:
            self._flush_scheduled = False
            if self._writer is not None or self._state is CLOSED:
                return
            data = self._take_batch()
            if not data:
                return
            try:
                sent = self._sender.send_nowait(data)
            except OSError as exc:
                self._gone(exc)
                return
            if sent < len(data):
                # The unsent tail of a frame must go out whole: it is never dropped.
                self._frames.appendleft((None, 0, data[sent:]))
            if self._frames:
                self._writer = self._sender.start(self._write_backlog)
            else:
                self._drained()

    def _write_backlog(self) -> None:
        """Own the socket until the queue is empty, waiting for it with a deadline."""
        try:
            while True:
                with self._lock:
                    data = self._take_batch()
                    if not data:
                        self._writer = None
                        self._drained()
                        return
                self._send(data)
        except WriteTimeout as exc:
            self._slow_consumer(exc.unsent)
        except OSError as exc:
            with self._lock:
                self._gone(exc)
        except Exception:
            # A writer must never die holding the socket: that would stall the connection
            # for good. Log, cut the connection, and let the reader end it.
            log.exception("writer_failed conn=%s", self.conn_id)
            with self._lock:
                self._gone()
            self._cut()

    def _send(self, data: bytes, timeout: float | None = None) -> None:
        """Write all of `data`, failing with WriteTimeout if no byte goes out for `timeout`."""
        timeout = self._write_timeout if timeout is None else timeout
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            sent = self._sender.send_nowait(view)
            if sent:
                view = view[sent:]
                deadline = time.monotonic() + timeout
                continue
            # The deadline, not the wait, bounds this: a socket may poll writable and still
            # take nothing, and that must not spin forever.
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sender.wait_writable(remaining):
                raise WriteTimeout(bytes(view))

    def _gone(self, exc: OSError | None = None) -> None:
        if exc is not None:
            log.debug("write_failed conn=%s error=%s", self.conn_id, exc)
        self._state = CLOSED
        self._frames.clear()
        self._writer = None

    def _slow_consumer(self, unsent: bytes) -> None:
        """Say goodbye to a socket that stopped reading, best effort, then cut it."""
        with self._lock:
            queued = len(self._frames)
            self._state = CLOSED
            self._frames.clear()
        metrics.slow_consumer_closed()
        log.warning(
            "slow_consumer conn=%s write_timeout=%ss queued=%d",
            self.conn_id,
            self._write_timeout,
            queued,
        )
        goodbye = wsframes.text(
            protocol.error(protocol.SLOW_CONSUMER, "socket accepted no data in time")
        ) + wsframes.close(4008, "slow consumer")
        with contextlib.suppress(WriteTimeout, OSError):
            self._send(unsent + goodbye, _SLOW_GOODBYE_SECONDS)
        self._cut()
        with self._lock:
            self._writer = None

    # Closing the TCP connection ------------------------------------------------------------

    def _cut_unless_peer_closed(self) -> None:
        if not self._peer_closed:
            self._cut()

    def _cut(self) -> None:
        """Shut the TCP connection down so that the reader and the handler end."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _linger(self) -> None:
        """Half-close and read until the peer closes, so our last frames are not lost.

        Closing a socket that still has unread input (the rest of an oversized message, a
        close reply) makes the kernel send RST, and an RST can destroy the close frame we
        just sent before the client reads it. Only done once the library's reader has ended,
        so that this is the only reader of the socket.
        """
        if not self._peer_closed:
            return
        deadline = time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(65536):
                    break
