"""A connection's inbound side: read client frames in the handler's own greenlet.

simple-websocket (under flask-sock) does the handshake; after that this loop, not a reader
thread of the library's, reads the socket through the same wsproto connection. One
greenlet per idle connection instead of two halves the memory an idle socket costs, and
the loop enforces the message limit in bytes, as SPEC §4.3 counts it (the library counts
characters). Every reply, pongs and close replies included, goes through the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from gateway.outbox import Outbox

log = logging.getLogger("gateway.ws")

_RECV_BYTES = 16384


class NoReaderThread:
    """Stands in for simple-websocket's reader thread (SOCK_SERVER_OPTIONS thread_class)."""

    name = "gateway-reader"

    def __init__(self, target=None, **kwargs) -> None:
        pass

    def start(self) -> None:
        """Start nothing: `read_frames` runs in the handler's greenlet instead."""


def read_frames(
    sock,
    protocol: Connection,
    outbox: Outbox,
    handle: Callable[[str | bytes], None],
    limit: int,
) -> int | None:
    """Feed each complete client message to `handle` until the connection ends.

    Returns the close code the client sent, or None when the socket ended without one.
    A message over `limit` bytes closes the connection with 1009; messages that arrive
    while the outbox is closing are read and discarded until the client's close frame.
    """
    parts: list[str | bytes] = []
    size = 0
    while True:
        try:
            data = sock.recv(_RECV_BYTES)
        except OSError:
            data = b""
        if not data:
            outbox.peer_closed()
            return None
        outbox.heard()
        protocol.receive_data(data)
        for event in protocol.events():
            if isinstance(event, TextMessage | BytesMessage):
                chunk = event.data
                size += _byte_length(chunk)
                if size > limit:
                    if outbox.is_open:
                        log.info("ws_rejected conn=%s reason=message_too_big", outbox.conn_id)
                        outbox.close(1009, "message too big")
                    parts, size = [], 0
                    continue
                parts.append(chunk)
                if event.message_finished:
                    message = parts[0] if len(parts) == 1 else type(chunk)().join(parts)
                    parts, size = [], 0
                    if outbox.is_open:
                        handle(message)
            elif isinstance(event, Ping):
                _reply(protocol, outbox, event.response())
            elif isinstance(event, CloseConnection):
                _reply(protocol, outbox, event.response())
                outbox.peer_closed()
                return event.code
        # Yield once per chunk read: under gevent this runs the flushes the chunk scheduled
        # (acks, fan-out) before the next chunk, so a pipelining client gets its acks while
        # it still has requests to send, instead of after the whole backlog.
        time.sleep(0)


def _reply(protocol: Connection, outbox: Outbox, event) -> None:
    # A close reply after our own close is refused by wsproto: nothing more to say then.
    with contextlib.suppress(LocalProtocolError):
        outbox.push_raw(protocol.send(event))


def _byte_length(chunk: str | bytes) -> int:
    if isinstance(chunk, bytes) or chunk.isascii():
        return len(chunk)
    return len(chunk.encode())
