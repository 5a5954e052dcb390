"""One WebSocket to the gateway: JSON frames in and out (docs/protocol.md).

The only module that knows simple-websocket, and the only one that builds client frames.
simple-websocket's `Client` reads in a thread of its own and answers the server's pings by
itself; it takes no timeout, so the connect and the handshake run under a default socket
timeout set for just that call (the client is a plain process with no other threads making
sockets meanwhile).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import simple_websocket

from gateway.client.api import describe_failure
from gateway.client.errors import AuthFailed, Refused, Unreachable

# Our own pings: a gateway that stops answering (a dead host, a cut network) is noticed within
# two intervals instead of never. The reader thread then waits in select(), never in recv().
PING_INTERVAL = 20.0
# Daemon reader threads: a Ctrl-C or an error exit never waits for a socket read.
_DAEMON_THREAD = functools.partial(threading.Thread, daemon=True)

CLOSE_NAMES = {
    1000: "closed normally",
    1001: "the gateway is going away",
    1005: "closed without a code",
    1006: "connection dropped",
    1008: "no pong or no heartbeat in time",
    1009: "message too big",
    4008: "this client read too slowly",
}


class ConnectionLost(Exception):
    """The WebSocket closed, or broke, after it was opened."""

    def __init__(self, code: int | None, reason: str | None = None) -> None:
        self.code = code
        name = CLOSE_NAMES.get(code, "") if code is not None else ""
        detail = ", ".join(part for part in (str(code) if code else "", name, reason) if part)
        super().__init__(f"disconnected ({detail or 'no close frame'})")


def websocket_url(base_url: str) -> str:
    """Return the `/ws` URL of a gateway given by its http(s) base URL."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


class Connection:
    """An open WebSocket to one gateway."""

    def __init__(self, ws: simple_websocket.Client) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    @classmethod
    def open(cls, base_url: str, token: str, timeout: float) -> Connection:
        """Connect and upgrade, or raise Unreachable, AuthFailed or Refused."""
        url = websocket_url(base_url)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            ws = simple_websocket.Client.connect(
                url,
                headers={"Authorization": f"Bearer {token}"},
                ping_interval=PING_INTERVAL,
                thread_class=_DAEMON_THREAD,
            )
        except simple_websocket.ConnectionError as exc:  # an HTTP answer instead of a 101
            raise _refused_upgrade(base_url, exc.status_code) from None
        except Exception as exc:  # OSError, or wsproto's error for an answer that is not HTTP
            reason = describe_failure(exc, timeout)
            raise Unreachable(f"cannot reach the gateway at {base_url}: {reason}") from None
        finally:
            socket.setdefaulttimeout(previous)
        # Back to blocking sends: with a timeout, simple-websocket's socket.send() could send
        # part of a large frame. Reads are unaffected (the reader thread selects first).
        ws.sock.settimeout(None)
        return cls(ws)

    def next_request_id(self, prefix: str = "r") -> str:
        """Return a request_id not used on this connection before."""
        return f"{prefix}{next(self._ids)}"

    def send(self, frame: dict) -> None:
        """Send one frame; raise ConnectionLost if the connection is gone."""
        try:
            self._ws.send(orjson.dumps(frame).decode())
        except simple_websocket.ConnectionClosed as exc:
            raise ConnectionLost(int(exc.reason), exc.message) from None
        except OSError as exc:
            raise ConnectionLost(None, str(exc) or type(exc).__name__) from None

    def recv(self, timeout: float) -> dict | None:
        """Return the next frame as a dict, None after `timeout`, or raise ConnectionLost."""
        try:
            text = self._ws.receive(timeout=timeout)
        except simple_websocket.ConnectionClosed as exc:
            raise ConnectionLost(int(exc.reason), exc.message) from None
        if text is None:
            return None
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            return {}  # not the protocol's; ignored like any frame of an unknown type
        return frame if isinstance(frame, dict) else {}

    def reply(self, request_id: str, timeout: float) -> dict | None:
        """Return the frame answering `request_id` (other frames are dropped), or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = self.recv(min(left, 1.0))
            if frame is not None and frame.get("request_id") == request_id:
                return frame
        return None

    def close(self) -> None:
        """Close with 1000 if still open; never raises."""
        try:
            self._ws.close()
        except Exception:  # already closed by the server, or a broken socket
            with contextlib.suppress(OSError):
                self._ws.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe_frame(
    topic: str,
    request_id: str,
    *,
    last_n: int | None = None,
    since_seq: int | None = None,
    epoch: str | None = None,
) -> dict:
    """Build a `subscribe` frame: with `last_n`, or `since_seq` (and `epoch`) to resume."""
    frame: dict[str, Any] = {"type": "subscribe", "topic": topic, "request_id": request_id}
    if since_seq is not None:
        frame["since_seq"] = since_seq
        if epoch is not None:
            frame["epoch"] = epoch
    else:
        frame["last_n"] = last_n or 0
    return frame


def publish_frame(topic: str, payload: Any, message_id: str, request_id: str) -> dict:
    """Build a `publish` frame carrying `payload`."""
    return {
        "type": "publish",
        "topic": topic,
        "message": {"id": message_id, "payload": payload},
        "request_id": request_id,
    }


def _refused_upgrade(base_url: str, status: int | None) -> Exception:
    """Turn the HTTP status that refused the upgrade into the error to report."""
    if status == 401:
        return AuthFailed(
            f"the gateway at {base_url} rejected the token: log in again with `gw login USERNAME`"
        )
    if status is None or status >= 500:
        return Unreachable(f"the gateway at {base_url} is unavailable ({status or 'no status'})")
    if status == 429:
        return Refused(f"the gateway at {base_url} refused another connection for this user (429)")
    return Refused(f"the gateway at {base_url} refused the WebSocket upgrade ({status})")
