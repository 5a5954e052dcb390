"""The open WebSocket connections and SSE streams of one worker: capacity, heartbeats, shutdown.

The registry knows connections only through the two small protocols below, which
gateway.transport.connection.Connection and gateway.transport.sse.SseStream implement.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from gateway import protocol
from gateway.supervisor import Loop
from gateway.transport import wsframes

log = logging.getLogger("gateway.ws")

# Sessions given their heartbeat between two yields to the event loop.
_BEAT_SLICE = 100


class Live(Protocol):
    """An open WebSocket connection, as the registry sees it."""

    conn_id: str

    @property
    def last_heard(self) -> float:
        """When the client last sent bytes (time.monotonic)."""

    def beat(self, frame: bytes) -> None:
        """Queue the heartbeat frame."""

    def end(self, code: int, reason: str, notice: bytes | None = None) -> None:
        """Queue `notice` and a close frame behind what is queued; close once flushed."""

    def abort(self) -> None:
        """Cut the connection now, unflushed."""


class Stream(Protocol):
    """An open SSE stream, as the registry sees it (it beats by itself)."""

    def shutdown(self) -> None:
        """End the stream after what is queued, with `event: shutdown`."""

    def abort(self) -> None:
        """Cut the stream now."""


class Registry:
    """Registry of open sessions and SSE streams; sends session heartbeats, drains on shutdown.

    SSE streams beat by themselves (their generator waits with the interval as timeout);
    the registry only needs them to end them on shutdown.
    """

    def __init__(
        self, heartbeat_interval: int, shutdown_grace: float, capacity: int | None = None
    ) -> None:
        self._heartbeat_interval = heartbeat_interval
        self._shutdown_grace = shutdown_grace
        self._lock = threading.Lock()
        self._sessions: set[Live] = set()
        self._streams: set[Stream] = set()
        self._stopping = threading.Event()
        self._heartbeat: Loop | None = None
        self.shutting_down = False
        # Most WebSockets and SSE streams at once (MAX_CONNECTIONS_PER_WORKER); None is no
        # limit. A WebSocket leaves gunicorn's pool once upgraded (gateway.transport.connection),
        # so gunicorn's own cap no longer counts it: this one does.
        self.capacity = capacity

    def add(self, session: Live) -> None:
        """Register an open session (the first one starts the heartbeat).

        One that was accepted just as shutdown began is said goodbye to at once.
        """
        with self._lock:
            self._sessions.add(session)
            if self.shutting_down:
                session.end(1001, "server shutdown", wsframes.text(protocol.shutdown()))
                return
            if self._heartbeat is None and self._heartbeat_interval > 0:
                self._heartbeat = Loop("heartbeat", self._beat, self._stopping).start()

    def remove(self, session: Live) -> None:
        """Forget a session whose socket has closed."""
        with self._lock:
            self._sessions.discard(session)

    def add_stream(self, stream: Stream) -> None:
        """Register an open SSE stream; one opened during shutdown is ended at once."""
        with self._lock:
            if not self.shutting_down:
                self._streams.add(stream)
                return
        stream.shutdown()

    def remove_stream(self, stream: Stream) -> None:
        """Forget an SSE stream that has ended."""
        with self._lock:
            self._streams.discard(stream)

    def count(self) -> int:
        """Return the number of open sessions and SSE streams."""
        return len(self._sessions) + len(self._streams)

    def counts(self) -> tuple[int, int]:
        """Return the number of open WebSockets and of open SSE streams."""
        return len(self._sessions), len(self._streams)

    def at_capacity(self) -> bool:
        """Tell whether another connection would exceed `capacity`."""
        return self.capacity is not None and self.count() >= self.capacity

    def problems(self) -> dict[str, str]:
        """Return what keeps this worker from taking new connections, by check name."""
        found = {}
        if self.shutting_down:
            found["draining"] = "the server is shutting down"
        if (
            self._heartbeat is not None
            and not self._heartbeat.running
            and not self._stopping.is_set()
        ):
            found["heartbeat"] = "the heartbeat loop stopped and is being restarted"
        return found

    def _snapshot(self) -> list[Live]:
        with self._lock:
            return list(self._sessions)

    def _beat(self) -> None:
        """Every interval: `info`/`ping` plus a WebSocket ping to all; close the silent ones.

        A live client answers each WebSocket ping with a pong, so one that has sent nothing
        for two intervals is gone (docs/delivery.md) and is closed with 1008.
        """
        interval = self._heartbeat_interval
        while not self._stopping.wait(interval):
            # One encoding per tick, shared by every connection.
            frame = wsframes.text(protocol.heartbeat()) + wsframes.PING
            silent_since = time.monotonic() - 2 * interval
            for index, session in enumerate(self._snapshot(), 1):
                try:
                    if session.last_heard < silent_since:
                        log.info("ws_ping_timeout conn=%s", session.conn_id)
                        session.end(1008, "ping timeout")
                    else:
                        session.beat(frame)
                except Exception:
                    # One connection's fault must not stop everyone's heartbeat.
                    log.exception("heartbeat_failed conn=%s", session.conn_id)
                if index % _BEAT_SLICE == 0:
                    # Thousands of heartbeats at once would hold the event loop for tens of
                    # milliseconds; a short sleep (not sleep(0), which polls no I/O) lets
                    # their flushes go out and waiting publishes in between slices.
                    time.sleep(0.001)

    def shutdown(self) -> None:
        """Flush and end every session and stream (docs/delivery.md); return when all are gone or grace ends."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self._stopping.set()
        with self._lock:
            sessions = list(self._sessions)
            streams = list(self._streams)
        log.info(
            "shutdown_begin sessions=%d streams=%d grace=%ss",
            len(sessions),
            len(streams),
            self._shutdown_grace,
        )
        notice = wsframes.text(protocol.shutdown())
        for session in sessions:
            # Queued events go out first: the notice and the close frame join the queue's tail.
            session.end(1001, "server shutdown", notice)
        for stream in streams:
            stream.shutdown()  # likewise: queued events, then `event: shutdown`
        deadline = time.monotonic() + self._shutdown_grace
        while self.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._snapshot()
        for session in left:
            session.abort()
        with self._lock:
            left_streams = list(self._streams)
        for stream in left_streams:
            stream.abort()
        log.info("shutdown_done unflushed=%d", len(left) + len(left_streams))
