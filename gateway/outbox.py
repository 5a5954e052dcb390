"""A connection's outbound side: one bounded queue, one writer, whole frames on the wire.

SPEC §5.4: events beyond `queue_size` drop the oldest *event* (control frames are never
dropped); the next event of a topic that lost events is preceded by one `info`/`dropped`
notice; a socket that accepts no bytes for `write_timeout` seconds is a slow consumer and
is closed with 4008. The writer is the only code that writes to the socket after the
handshake, and it always writes whole frames (SPEC §10: simple-websocket's own `send`
ignores partial writes and corrupts the stream of a slow reader).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque

from gateway import protocol, wsframes
from gateway.wire import is_gevent_socket, send_nowait, wait_writable

log = logging.getLogger("gateway.ws")

OPEN, CLOSING, CLOSED = "open", "closing", "closed"

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
    """The bounded outbound queue of one WebSocket connection and its single writer."""

    def __init__(self, sock, conn_id: str, queue_size: int, write_timeout: float) -> None:
        self.conn_id = conn_id
        self._sock = sock
        self._gevent = is_gevent_socket(sock)
        self._queue_size = queue_size
        # Control frames are never dropped, so a client that floods requests without
        # reading the replies is cut off here instead of growing memory without bound.
        self._control_limit = max(1000, 10 * queue_size)
        self._write_timeout = write_timeout
        self._lock = threading.Lock()
        self._frames: deque[tuple[str | None, bytes]] = deque()
        self._events = 0
        self._dropped: dict[str, int] = {}
        self._state = OPEN
        self._close_sent = False
        self._wake = threading.Event()
        self._peer_closed = threading.Event()
        self._writer = threading.Thread(target=self._run, name=f"writer-{conn_id}", daemon=True)
        self._writer.start()

    @property
    def is_open(self) -> bool:
        """Tell whether frames are still accepted."""
        return self._state is OPEN

    def push_event(self, topic: str, frame: bytes) -> None:
        """Queue an event frame, dropping the oldest queued event if the queue is full."""
        with self._lock:
            if self._state is not OPEN:
                return
            if self._events >= self._queue_size:
                self._drop_oldest_event()
            self._frames.append((topic, frame))
            self._events += 1
        self._wake.set()

    def push(self, frame: bytes) -> None:
        """Queue a control frame (ack, error, pong, info); these are never dropped."""
        with self._lock:
            if self._state is not OPEN:
                return
            if len(self._frames) - self._events >= self._control_limit:
                self._begin_close_locked(
                    protocol.error(protocol.SLOW_CONSUMER, "too many unread replies"),
                    4008,
                    "slow consumer",
                )
                log.warning("slow_consumer conn=%s reason=unread_replies", self.conn_id)
            else:
                self._frames.append((None, frame))
        self._wake.set()

    def push_raw(self, data: bytes) -> None:
        """Queue protocol bytes from the WebSocket library (pong, ping, close reply)."""
        with self._lock:
            if self._close_sent or self._state is CLOSED:
                return
            self._frames.append((None, data))
        self._wake.set()

    def close(self, code: int, reason: str, notice: bytes | None = None) -> None:
        """Queue an optional last notice and a close frame; later frames are refused."""
        with self._lock:
            if self._state is not OPEN:
                return
            self._begin_close_locked(notice, code, reason)
        self._wake.set()

    def peer_closed(self) -> None:
        """Record that the reading side has ended (close reply received or socket gone)."""
        self._peer_closed.set()

    def finish(self, timeout: float) -> None:
        """Flush what is queued (the library's close reply included) and stop the writer."""
        with self._lock:
            if self._state is OPEN:
                self._state = CLOSING
        self._wake.set()
        self._writer.join(timeout)
        if self._writer.is_alive():
            self._cut()
            self._writer.join(1.0)
        self._linger()

    def _linger(self) -> None:
        """Half-close and read until the peer closes, so our last frames are not lost.

        Closing a socket that still has unread input (the rest of an oversized message, a
        close reply) makes the kernel send RST, and an RST can destroy the close frame we
        just sent before the client reads it. Only done once the library's reader has ended,
        so that this is the only reader of the socket.
        """
        if not self._peer_closed.is_set():
            return
        deadline = time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._sock.recv(65536):
                    break

    def pending(self) -> int:
        """Return the number of frames waiting to be written."""
        return len(self._frames)

    def _begin_close_locked(self, notice: bytes | None, code: int, reason: str) -> None:
        if notice is not None:
            self._frames.append((None, notice))
        self._frames.append((None, wsframes.close(code, reason)))
        self._close_sent = True
        self._state = CLOSING

    def _drop_oldest_event(self) -> None:
        for index, (topic, _) in enumerate(self._frames):
            if topic is not None:
                del self._frames[index]
                self._events -= 1
                self._dropped[topic] = self._dropped.get(topic, 0) + 1
                return

    def _take_batch(self) -> list[bytes]:
        """Pop frames up to the batch budget, placing drop notices before their topic's event."""
        batch: list[bytes] = []
        size = 0
        frames = self._frames
        while frames and size < _BATCH_BYTES:
            topic, frame = frames.popleft()
            if topic is not None:
                self._events -= 1
                lost = self._dropped.pop(topic, 0)
                if lost:
                    batch.append(wsframes.text(protocol.dropped(topic, lost)))
            batch.append(frame)
            size += len(frame)
        if not frames and self._dropped and not self._close_sent:
            for topic, lost in self._dropped.items():
                batch.append(wsframes.text(protocol.dropped(topic, lost)))
            self._dropped.clear()
        return batch

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                with self._lock:
                    self._wake.clear()
                    batch = self._take_batch()
                    done = self._state is not OPEN and not self._frames
                if batch:
                    self._send(b"".join(batch))
                if done:
                    break
                if batch:
                    self._wake.set()  # more may be queued beyond the batch budget
        except WriteTimeout as exc:
            self._slow_consumer(exc.unsent)
        except OSError as exc:
            log.debug("write_failed conn=%s error=%s", self.conn_id, exc)
        finally:
            with self._lock:
                self._state = CLOSED
                self._frames.clear()
        if self._close_sent and not self._peer_closed.wait(_CLOSE_REPLY_SECONDS):
            self._cut()

    def _slow_consumer(self, unsent: bytes) -> None:
        """Say goodbye to a socket that stopped reading, best effort, then cut it."""
        log.warning(
            "slow_consumer conn=%s write_timeout=%ss queued=%d",
            self.conn_id,
            self._write_timeout,
            len(self._frames),
        )
        with self._lock:
            self._state = CLOSED
            self._frames.clear()
        goodbye = wsframes.text(
            protocol.error(protocol.SLOW_CONSUMER, "socket accepted no data in time")
        ) + wsframes.close(4008, "slow consumer")
        with contextlib.suppress(WriteTimeout, OSError):
            self._send(unsent + goodbye, _SLOW_GOODBYE_SECONDS)
        self._cut()

    def abort(self) -> None:
        """Cut the connection now, whatever is still queued."""
        with self._lock:
            self._state = CLOSED
            self._frames.clear()
        self._wake.set()
        self._cut()

    def _cut(self) -> None:
        """Shut the TCP connection down so that the reader and the handler end."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _send(self, data: bytes, timeout: float | None = None) -> None:
        """Write all of `data`, failing with WriteTimeout if no byte goes out for `timeout`."""
        timeout = self._write_timeout if timeout is None else timeout
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            sent = send_nowait(self._sock, view, self._gevent)
            if sent:
                view = view[sent:]
                deadline = time.monotonic() + timeout
                continue
            # The deadline, not the wait, bounds this: a socket may poll writable and still
            # take nothing, and that must not spin forever.
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not wait_writable(self._sock, remaining, self._gevent):
                raise WriteTimeout(bytes(view))
