"""The live WebSocket sessions and SSE streams of one app: heartbeats, graceful shutdown."""

from __future__ import annotations

import logging
import threading
import time

from gateway import protocol, wsframes
from gateway.session import Session
from gateway.sse import SseStream
from gateway.supervisor import Loop

log = logging.getLogger("gateway.ws")

# Sessions given their heartbeat between two yields to the event loop.
_BEAT_SLICE = 100


class Hub:
    """Registry of open sessions and SSE streams; sends session heartbeats, drains on shutdown.

    SSE streams beat by themselves (their generator waits with the interval as timeout);
    the hub only needs them to end them on shutdown.
    """

    def __init__(self, heartbeat_interval: int, shutdown_grace: float) -> None:
        self._heartbeat_interval = heartbeat_interval
        self._shutdown_grace = shutdown_grace
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._streams: set[SseStream] = set()
        self._stopping = threading.Event()
        self._heartbeat: Loop | None = None
        self.shutting_down = False
        # Most WebSockets and SSE streams at once; None is no limit of ours. Under gunicorn
        # it is worker_connections (gunicorn.conf.py): a WebSocket leaves gunicorn's pool
        # once upgraded (gateway.connection), so gunicorn's own cap no longer counts it.
        self.capacity: int | None = None

    def add(self, session: Session) -> None:
        """Register an open session (the first one starts the heartbeat).

        One that was accepted just as shutdown began is said goodbye to at once.
        """
        with self._lock:
            self._sessions.add(session)
            if self.shutting_down:
                session.outbox.close(1001, "server shutdown", wsframes.text(protocol.shutdown()))
                return
            if self._heartbeat is None and self._heartbeat_interval > 0:
                self._heartbeat = Loop("heartbeat", self._beat, self._stopping).start()

    def remove(self, session: Session) -> None:
        """Forget a session whose socket has closed."""
        with self._lock:
            self._sessions.discard(session)

    def add_stream(self, stream: SseStream) -> None:
        """Register an open SSE stream; one opened during shutdown is ended at once."""
        with self._lock:
            if not self.shutting_down:
                self._streams.add(stream)
                return
        stream.shutdown()

    def remove_stream(self, stream: SseStream) -> None:
        """Forget an SSE stream that has ended."""
        with self._lock:
            self._streams.discard(stream)

    def count(self) -> int:
        """Return the number of open sessions and SSE streams."""
        return len(self._sessions) + len(self._streams)

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

    def _snapshot(self) -> list[Session]:
        with self._lock:
            return list(self._sessions)

    def _beat(self) -> None:
        """Every interval: `info`/`ping` plus a WebSocket ping to all; close the silent ones.

        A live client answers each WebSocket ping with a pong, so one that has sent nothing
        for two intervals is gone (README "Delivery guarantees and backpressure") and is closed with 1008.
        """
        interval = self._heartbeat_interval
        while not self._stopping.wait(interval):
            # One encoding per tick, shared by every connection.
            frame = wsframes.text(protocol.heartbeat()) + wsframes.PING
            silent_since = time.monotonic() - 2 * interval
            for index, session in enumerate(self._snapshot(), 1):
                try:
                    if session.outbox.last_heard < silent_since:
                        log.info("ws_ping_timeout conn=%s", session.conn_id)
                        session.outbox.close(1008, "ping timeout")
                    else:
                        session.outbox.push(frame)
                except Exception:
                    # One connection's fault must not stop everyone's heartbeat.
                    log.exception("heartbeat_failed conn=%s", session.conn_id)
                if index % _BEAT_SLICE == 0:
                    # Thousands of heartbeats at once would hold the event loop for tens of
                    # milliseconds; a short sleep (not sleep(0), which polls no I/O) lets
                    # their flushes go out and waiting publishes in between slices.
                    time.sleep(0.001)

    def shutdown(self) -> None:
        """Flush and end every session and stream (README "Delivery guarantees and backpressure"); return when all are gone or grace ends."""
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
            session.outbox.close(1001, "server shutdown", notice)
        for stream in streams:
            stream.shutdown()  # likewise: queued events, then `event: shutdown`
        deadline = time.monotonic() + self._shutdown_grace
        while self.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._snapshot()
        for session in left:
            session.outbox.abort()
        with self._lock:
            left_streams = list(self._streams)
        for stream in left_streams:
            stream.abort()
        log.info("shutdown_done unflushed=%d", len(left) + len(left_streams))
