"""A connection's inbound side: client bytes in, whole messages out.

simple-websocket (under flask-sock) does the handshake; after that our code, not a reader
thread of the library's, reads the socket through the same wsproto connection, and
enforces the message limit in bytes, as docs/protocol.md counts it (the library counts
characters). Every reply, pongs and close replies included, goes through the outbox.

`FrameReader` only parses: who reads the socket is the connection's business
(gateway.transport.connection): a blocking loop in the handler's thread, or the gevent event loop
waking the connection when bytes arrive.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

log = logging.getLogger("gateway.ws")

RECV_BYTES = 16384
# Frames one message may be split into: empty continuation frames cost the reader a list
# entry each while counting 0 bytes against the size limit (docs/configuration.md "Limits").
MAX_FRAGMENTS = 1024


class Replies(Protocol):
    """The outbound side as the reader needs it (gateway.transport.outbox.Outbox is one)."""

    conn_id: str

    @property
    def is_open(self) -> bool:
        """Whether the connection still accepts frames (not closing)."""

    def close(self, code: int, reason: str) -> None:
        """Queue a close frame behind what is queued."""

    def push_raw(self, data: bytes, closing: bool = False) -> None:
        """Queue bytes the protocol wrote (a pong, the close reply)."""

    def peer_closed(self) -> None:
        """Record that the client's side has ended."""


class FrameReader:
    """Feeds complete client messages to `handle`; answers pings and the close frame.

    A message over `limit` bytes, or in more than MAX_FRAGMENTS frames, closes the
    connection with 1009; messages that arrive while the outbox is closing are read and
    discarded until the client's close frame.
    """

    __slots__ = (
        "_protocol",
        "_outbox",
        "_handle",
        "_limit",
        "_parts",
        "_size",
        "close_code",
        "last_heard",
    )

    def __init__(
        self,
        protocol: Connection,
        outbox: Replies,
        handle: Callable[[list[str | bytes]], None],
        limit: int,
    ) -> None:
        self._protocol = protocol
        self._outbox = outbox
        self._handle = handle
        self._limit = limit
        self._parts: list[str | bytes] = []
        self._size = 0
        # The code of the client's close frame, once one has arrived.
        self.close_code: int | None = None
        # When the client last sent bytes (any frame, pongs included): the heartbeat's
        # liveness check (gateway.transport.registry).
        self.last_heard = time.monotonic()

    def feed(self, data: bytes) -> bool:
        """Serve the messages completed by `data`; return True once the client has closed.

        The messages one read completes go to `handle` together, in order (a pipelining
        client's publishes then share one broker round trip: docs/performance.md), and
        always before anything this read makes us close.
        """
        outbox = self._outbox
        self.last_heard = time.monotonic()
        self._protocol.receive_data(data)
        messages: list[str | bytes] = []
        for event in self._protocol.events():
            if isinstance(event, TextMessage | BytesMessage):
                chunk = event.data
                parts = self._parts
                self._size += _byte_length(chunk)
                if self._size > self._limit or len(parts) >= MAX_FRAGMENTS:
                    self._serve(messages)
                    if outbox.is_open:
                        reason = "message_too_big" if self._size > self._limit else "fragments"
                        log.info("ws_rejected conn=%s reason=%s", outbox.conn_id, reason)
                        outbox.close(1009, "message too big")
                    self._parts, self._size = [], 0
                    continue
                parts.append(chunk)
                if event.message_finished:
                    messages.append(parts[0] if len(parts) == 1 else type(chunk)().join(parts))
                    self._parts, self._size = [], 0
            elif isinstance(event, Ping):
                self._reply(event.response())
            elif isinstance(event, CloseConnection):
                self._serve(messages)
                self._reply(event.response(), closing=True)
                outbox.peer_closed()
                self.close_code = event.code
                return True
        self._serve(messages)
        return False

    def _serve(self, messages: list[str | bytes]) -> None:
        """Hand `messages` to the handler (unless we are closing) and empty the list."""
        if messages:
            if self._outbox.is_open:
                self._handle(messages[:])
            messages.clear()

    def ended(self) -> None:
        """Record that the socket ended without a close frame."""
        self._outbox.peer_closed()

    def _reply(self, event, closing: bool = False) -> None:
        # A close reply after our own close is refused by wsproto: nothing more to say then.
        with contextlib.suppress(LocalProtocolError):
            self._outbox.push_raw(self._protocol.send(event), closing)


def read_frames(sock, reader: FrameReader) -> int | None:
    """Read `sock` (blocking) into `reader` until the connection ends; return the close code.

    None means the socket ended without a close frame.
    """
    while True:
        try:
            data = sock.recv(RECV_BYTES)
        except OSError:
            data = b""
        if not data:
            reader.ended()
            return None
        if reader.feed(data):
            return reader.close_code
        # Yield once per chunk read: under gevent this runs the flushes the chunk scheduled
        # (acks, fan-out) before the next chunk, so a pipelining client gets its acks while
        # it still has requests to send, instead of after the whole backlog.
        time.sleep(0)


def _byte_length(chunk: str | bytes) -> int:
    if isinstance(chunk, bytes) or chunk.isascii():
        return len(chunk)
    return len(chunk.encode())
