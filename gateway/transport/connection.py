"""One WebSocket connection after the upgrade: its outbox, session and reader, and its end.

Two ways to serve it:

- `serve()` reads in the caller's thread until the connection ends: the Flask dev server
  and any non-gevent worker, where a thread per connection is the model anyway.
- `park()` (gunicorn's gevent worker): the connection takes its socket over from gunicorn
  and the request handler returns. From then on the event loop wakes the connection when
  bytes arrive, and a short-lived greenlet serves them. An idle connection therefore holds
  no greenlet (no saved stack, no frames), no gunicorn request or parser and no Flask
  request context: only the objects below and its socket.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

from wsproto.connection import Connection as WsConnection

from gateway.brokers import Broker
from gateway.config import Settings
from gateway.transport import libraries
from gateway.transport.outbox import Outbox
from gateway.transport.reader import RECV_BYTES, FrameReader, read_frames
from gateway.transport.registry import Registry
from gateway.transport.session import Session

if TYPE_CHECKING:
    from gateway.guards.access import Roles
    from gateway.guards.admission import Claim

log = logging.getLogger("gateway.ws")


class Connection:
    """A served WebSocket: from `open()` to the single call of `_end()`."""

    __slots__ = (
        "conn_id",
        "sock",
        "outbox",
        "session",
        "reader",
        "_registry",
        "_finish_timeout",
        "_started",
        "_watcher",
        "claim",
    )

    def __init__(
        self,
        sock,
        protocol: WsConnection,
        user_id: str,
        settings: Settings,
        broker: Broker,
        registry: Registry,
        roles: Roles | None = None,
    ) -> None:
        self.conn_id = uuid.uuid4().hex[:12]
        self.sock = sock
        self.outbox = Outbox(
            sock, self.conn_id, settings.subscriber_queue_size, settings.write_timeout_seconds
        )
        self.session = Session(
            self.conn_id,
            user_id,
            broker,
            self.outbox,
            max_json_depth=settings.max_json_depth,
            max_subscriptions=settings.max_subscriptions_per_connection,
            publish_rate=settings.publish_rate_limit,
            roles=roles,
        )
        self.reader = FrameReader(
            protocol, self.outbox, self.session.handle_many, settings.max_message_bytes
        )
        self._registry = registry
        self._finish_timeout = settings.write_timeout_seconds + 1
        self._started = time.monotonic()
        self._watcher = None
        # The user's count in MAX_CONNECTIONS_PER_USER (gateway.guards.admission), released at the end.
        self.claim: Claim | None = None

    def open(self, peer: str | None) -> None:
        """Register with the registry (heartbeats, shutdown)."""
        self._registry.add(self)
        log.info("ws_connect conn=%s user=%s peer=%s", self.conn_id, self.session.user_id, peer)

    def serve(self) -> None:
        """Read in this thread until the connection ends, then end it."""
        code = None
        try:
            code = read_frames(self.sock, self.reader)
        except Exception:
            log.exception("ws_error conn=%s", self.conn_id)
        finally:
            self._end(code)

    # What the registry calls (gateway.transport.registry.Live) ----------------------------

    @property
    def last_heard(self) -> float:
        """When the client last sent bytes (time.monotonic)."""
        return self.reader.last_heard

    def beat(self, frame: bytes) -> None:
        """Queue the heartbeat frame."""
        self.outbox.push(frame)

    def end(self, code: int, reason: str, notice: bytes | None = None) -> None:
        """Close after what is queued (and `notice`)."""
        self.outbox.close(code, reason, notice)

    def abort(self) -> None:
        """Cut the connection now."""
        self.outbox.abort()

    # Parked: driven by the gevent event loop ---------------------------------------------

    def park(self, early: bytes = b"") -> None:
        """Have the event loop call us when bytes arrive; return at once.

        `early` is what the client sent right behind the upgrade request, which the HTTP
        server had already read; it is served first.
        """
        import gevent

        self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        if early:
            gevent.spawn_raw(self._read_burst, early)
        else:
            self._watcher.start(self._readable)

    def _readable(self) -> None:
        # Runs in the event loop itself, which must never block: serve in a new greenlet.
        import gevent

        self._watcher.stop()
        gevent.spawn_raw(self._read_burst)

    def _read_burst(self, early: bytes = b"") -> None:
        """Serve what the client has sent, then wait for the event loop again (or end)."""
        import gevent

        raw = libraries.raw_socket(self.sock)
        code = None
        try:
            while True:
                if early:
                    data, early = early, b""
                else:
                    try:
                        data = raw.recv(RECV_BYTES)
                    except BlockingIOError:
                        self._watcher.start(self._readable)
                        return
                    except OSError:
                        data = b""
                    if not data:
                        self.reader.ended()
                        break
                if self.reader.feed(data):
                    code = self.reader.close_code
                    break
                if len(data) < RECV_BYTES:
                    # Most likely all there was; the watcher fires again if not.
                    self._watcher.start(self._readable)
                    return
                # A long burst yields per chunk, as `read_frames` does (acks go out early).
                gevent.sleep(0)
        except Exception:
            log.exception("ws_error conn=%s", self.conn_id)
        self._watcher.close()
        self._watcher = None  # it refers back to us through its callback
        try:
            self._end(code, close_socket=True)
        except Exception:
            # Nobody above this greenlet would report it: the handler returned long ago.
            log.exception("ws_error conn=%s while closing", self.conn_id)

    # The end -------------------------------------------------------------------------------

    def _end(self, code: int | None, close_socket: bool = False) -> None:
        """Unsubscribe, flush and close the outbox (and the socket if ours), forget the session.

        The registry forgets the connection last, so that a graceful shutdown waits for the socket
        to be closed, not just for the goodbye to be queued.
        """
        try:
            self.session.close()
            self.outbox.finish(self._finish_timeout)
        finally:
            if self.claim is not None:
                self.claim.release()
            if close_socket:
                self.sock.close()
            self._registry.remove(self)
            log.info(
                "ws_disconnect conn=%s code=%s seconds=%.1f",
                self.conn_id,
                code,
                time.monotonic() - self._started,
            )


def adopt(sock):
    """Take a gevent socket's descriptor over from its owner (gunicorn), in a new wrapper.

    gunicorn closes the socket it handed to the request handler when the handler returns;
    a detached socket's close leaves the descriptor open, and the new wrapper owns it.
    """
    from gevent import socket as gsocket

    family, kind, proto = sock.family, sock.type, sock.proto
    return gsocket.socket(family, kind, proto, fileno=sock.detach())
