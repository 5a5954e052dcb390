"""Drive a real gateway process over real sockets: server launcher, HTTP and WebSocket clients."""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import itertools
import json
import os
import re
import resource
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables of docs/configuration.md (and gunicorn's own) that must not leak from the caller's shell.
CONFIG_VARS = (
    "JWT_SECRET_KEY",
    "PORT",
    "ALLOWED_CORS_ORIGIN",
    "ALLOWED_CORS_METHOD",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "JWT_EXPIRES_MINUTES",
    "RING_BUFFER_SIZE",
    "SUBSCRIBER_QUEUE_SIZE",
    "HEARTBEAT_INTERVAL",
    "MAX_MESSAGE_BYTES",
    "DATABASE_URL",
    "BROKER_URL",
    "WRITE_TIMEOUT_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "WEB_CONCURRENCY",
    "MAX_JSON_DEPTH",
    "RING_BUFFER_BYTES",
    "LOGIN_RATE_LIMIT",
    "PUBLISH_RATE_LIMIT",
    "MAX_TOPICS",
    "MAX_TOPICS_PER_USER",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_CONNECTIONS_PER_WORKER",
    "METRICS_TOKEN",
    "PROMETHEUS_MULTIPROC_DIR",
    "HOST",
    "GUNICORN_CMD_ARGS",
    "FLASK_APP",
    "FLASK_DEBUG",
)

# Most tests register many users from one address, publish at full speed and create many
# topics with one token: they run with the rate limits and per-user quotas off. Tests of the
# limits themselves (test_live_hostile.py and friends) set the values they need explicitly.
LIMITS_OFF = {
    "LOGIN_RATE_LIMIT": "0",
    "PUBLISH_RATE_LIMIT": "0",
    "MAX_TOPICS_PER_USER": "0",
    "MAX_CONNECTIONS_PER_USER": "0",
}

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3,9}Z$")
PASSWORD = "correct-horse-battery"


def unique(prefix: str = "t") -> str:
    """Return a name that no other test uses (valid as topic name and username)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """Return a TCP port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns a truthy value; fail after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


# ---------------------------------------------------------------------------------------------
# Server process


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child_setup(nofile: int | None):
    def setup() -> None:
        _default_sigint()
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return setup


class Server:
    """One gateway process (gunicorn or the Flask dev server) on a free port."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, Any] | None = None,
        kind: str = "gunicorn",
        args: tuple[str, ...] = (),
        nofile: int | None = None,
        wrapper: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.nofile = nofile  # the process's open-files limit (soft and hard), if set
        self.port = free_port()
        self.dir = workdir / f"{kind}-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        full = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        full.update(
            PORT=str(self.port),
            JWT_SECRET_KEY=secrets.token_hex(32),
            DATABASE_URL=str(self.dir / "users.db"),
            LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
            **LIMITS_OFF,
        )
        for key, value in (env or {}).items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = str(value)
        self.env = full
        if kind == "gunicorn":
            # Metric files in the test's own folder: a killed server leaves nothing in /tmp.
            full.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self.dir / "prometheus"))
            self.cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                *args,
                "wsgi:app",
            ]
        elif kind == "flask":
            self.cmd = [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "wsgi",
                "run",
                "--port",
                str(self.port),
                *args,
            ]
        else:
            raise ValueError(kind)
        # A command the server runs under (e.g. setpriv, to drop a capability).
        self.cmd = [*wrapper, *self.cmd]

    # -- lifecycle
    def launch(self) -> Server:
        """Start the process without waiting for it to serve."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - stays open while the server runs
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A test run launched in the background inherits an ignored SIGINT, and Python
            # would then ignore the dev server's Ctrl-C too: give it the default back.
            preexec_fn=_child_setup(self.nofile),
        )
        return self

    def start(self, timeout: float = 15.0) -> Server:
        """Start the process and wait until GET /health answers 200."""
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.kind} exited with {self.proc.returncode} before serving\n{self.log_tail()}"
                )
            try:
                status, _ = http("GET", self.url + "/health", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.kind} not healthy after {timeout}s\n{self.log_tail()}")

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; return its code or None on timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send a signal to the main process only (gunicorn master / flask)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the main process and wait; kill the process group if it overstays."""
        if self.proc is None:
            return None
        self.send_signal(sig)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
        return rc

    def kill(self) -> None:
        """SIGKILL everything this server started (its own process group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def close(self) -> None:
        """Teardown: graceful stop if still running, then make sure nothing is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop(timeout=10)
        self.kill()
        if self._log:
            self._log.close()

    # -- addresses and logs
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str | None = None) -> str:
        url = f"ws://127.0.0.1:{self.port}/ws"
        if token is not None:
            url += "?" + urllib.parse.urlencode({"token": token})
        return url

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- {self.kind} log tail ({self.log_path}) ---\n" + "\n".join(text)


# ---------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


_NO_BODY = object()


def http_full(
    method: str,
    url: str,
    body: Any = _NO_BODY,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 10.0,
) -> Response:
    """Send one request; never raise on an HTTP error status."""
    parts = urllib.parse.urlsplit(url)
    hdrs = dict(headers or {})
    data = raw
    if body is not _NO_BODY:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def http(
    method: str, url: str, body: Any = _NO_BODY, token: str | None = None, **kwargs
) -> tuple[int, Any]:
    """Send one request; return (status, parsed JSON body or None)."""
    resp = http_full(method, url, body, token=token, **kwargs)
    return resp.status, resp.json


def register(server: Server, username: str | None = None, password: str = PASSWORD) -> str:
    """Register a fresh user and return its token."""
    username = username or unique("u")
    status, body = http(
        "POST", server.url + "/users/register", {"username": username, "password": password}
    )
    assert status == 201, (status, body)
    return body["token"]


def create_topic(server: Server, token: str, name: str | None = None) -> str:
    """Create a topic through REST and return its name."""
    name = name or unique("topic")
    status, body = http("POST", server.url + "/topics", {"name": name}, token=token)
    assert status == 201, (status, body)
    return name


def stats_topic(server: Server, name: str) -> dict | None:
    status, body = http("GET", server.url + "/stats")
    assert status == 200, (status, body)
    return body["topics"].get(name)


# ---------------------------------------------------------------------------------------------
# WebSocket client built on websockets' sync client


class NoFrame(AssertionError):
    """No frame arrived within the timeout."""


def read_until(recv, handle, done, idle: float = 15.0) -> None:
    """Feed frames from recv(timeout) to handle(frame) until done() holds.

    Polls with short timeouts, so a condition that becomes true while the socket is quiet
    (for instance the publisher announcing its final seq) is seen at once; fails after idle
    seconds without any frame.
    """
    last = time.monotonic()
    while not done():
        try:
            frame = recv(0.2)
        except (NoFrame, TimeoutError):
            if time.monotonic() - last > idle:
                raise NoFrame(f"no frame for {idle}s and not done yet") from None
            continue
        last = time.monotonic()
        handle(frame)


class Client:
    """A JSON WebSocket client with request/reply helpers; heartbeats are skipped by default."""

    def __init__(self, conn: ClientConnection):
        self.conn = conn
        self.backlog: collections.deque[dict] = collections.deque()
        self.heartbeats = 0
        self._ids = itertools.count(1)

    def close(self) -> None:
        # Teardown of a socket the server may already have closed.
        with contextlib.suppress(Exception):
            self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, obj: Any) -> None:
        """Send str/bytes as they are, a list of str as fragments of one message, else JSON."""
        if isinstance(obj, list) and obj and all(isinstance(p, str) for p in obj):
            self.conn.send(obj)
        else:
            self.conn.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    def recv_raw(self, timeout: float = 5.0) -> dict:
        """Next frame from the socket (ignores the backlog), heartbeats included."""
        try:
            text = self.conn.recv(timeout=timeout)
        except TimeoutError:
            raise NoFrame(f"no frame within {timeout}s") from None
        assert isinstance(text, str), f"server sent a binary frame: {text!r}"
        frame = json.loads(text)
        assert isinstance(frame, dict), frame
        assert TS_RE.match(frame.get("ts", "")), f"bad or missing ts in {frame}"
        return frame

    def recv(self, timeout: float = 5.0, skip_heartbeat: bool = True) -> dict:
        """Next frame, backlog first."""
        if self.backlog:
            return self.backlog.popleft()
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_raw(max(0.01, deadline - time.monotonic()))
            if skip_heartbeat and frame.get("type") == "info" and frame.get("msg") == "ping":
                self.heartbeats += 1
                continue
            return frame

    def call(self, obj: dict, timeout: float = 5.0) -> dict:
        """Send obj with a fresh request_id; return the reply carrying it, keep others in backlog."""
        rid = obj.setdefault("request_id", f"r{next(self._ids)}-{uuid.uuid4().hex[:6]}")
        self.send(obj)
        deadline = time.monotonic() + timeout
        others = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no reply to {obj} within {timeout}s; got {others}")
                frame = self.recv_raw(remaining)
                if frame.get("type") == "info" and frame.get("msg") == "ping":
                    self.heartbeats += 1
                    continue
                if frame.get("request_id") == rid:
                    return frame
                others.append(frame)
        finally:
            self.backlog.extend(others)

    def subscribe(self, topic: str, last_n: int | None = None, **extra) -> dict:
        msg = {"type": "subscribe", "topic": topic, **extra}
        if last_n is not None:
            msg["last_n"] = last_n
        ack = self.call(msg)
        assert ack["type"] == "ack" and ack["status"] == "ok" and ack["topic"] == topic, ack
        return ack

    def unsubscribe(self, topic: str) -> dict:
        ack = self.call({"type": "unsubscribe", "topic": topic})
        assert ack["type"] == "ack" and ack["topic"] == topic, ack
        return ack

    def publish(self, topic: str, payload: Any = None, msg_id: str | None = None) -> dict:
        """Publish and return the ack (asserting it is an ok ack with an int seq)."""
        ack = self.call(
            {
                "type": "publish",
                "topic": topic,
                "message": {"id": msg_id or uuid.uuid4().hex, "payload": payload},
            }
        )
        assert ack["type"] == "ack" and ack["status"] == "ok", ack
        assert isinstance(ack.get("seq"), int) and not isinstance(ack["seq"], bool), ack
        return ack

    def ping(self, timeout: float = 5.0) -> dict:
        pong = self.call({"type": "ping"}, timeout=timeout)
        assert pong["type"] == "pong", pong
        return pong

    def barrier(self, timeout: float = 5.0) -> list[dict]:
        """Ping and return every non-heartbeat frame that arrived before the pong."""
        self.ping(timeout)
        frames = list(self.backlog)
        self.backlog.clear()
        return frames

    def quiet(self, period: float = 0.3) -> list[dict]:
        """Return whatever non-heartbeat frames arrive during period (expected: none)."""
        frames = list(self.backlog)
        self.backlog.clear()
        deadline = time.monotonic() + period
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                text = self.conn.recv(timeout=remaining)
            except TimeoutError:
                break
            frame = json.loads(text)
            if not (frame.get("type") == "info" and frame.get("msg") == "ping"):
                frames.append(frame)
        return frames

    def events(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Receive exactly count frames and assert they are all events."""
        frames = [self.recv(timeout) for _ in range(count)]
        for f in frames:
            assert f["type"] == "event", f"expected an event, got {f}"
        return frames

    def until_closed(self, timeout: float = 10.0) -> tuple[list[dict], int | None]:
        """Read until the server closes; return (frames incl. heartbeats, close code received)."""
        frames = list(self.backlog)
        self.backlog.clear()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server did not close within {timeout}s; got {frames[-5:]}")
            try:
                text = self.conn.recv(timeout=remaining)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                return frames, (exc.rcvd.code if exc.rcvd else None)
            frames.append(json.loads(text))


def ws_connect(
    server: Server,
    token: str | None = None,
    *,
    header_token: str | None = None,
    origin: str | None = None,
) -> Client:
    """Open /ws with ?token= (token) and/or an Authorization header (header_token)."""
    headers = {"Authorization": f"Bearer {header_token}"} if header_token else None
    conn = connect(
        server.ws_url(token),
        open_timeout=5,
        close_timeout=2,
        max_size=None,
        compression=None,
        ping_interval=None,
        origin=origin,
        legacy=True,
        additional_headers=headers,
    )
    return Client(conn)


def check_event(frame: dict, topic: str, seq: int | None = None) -> dict:
    """Assert frame is a well-formed event of topic (and seq); return its message."""
    assert frame["type"] == "event", frame
    assert frame["topic"] == topic, frame
    msg = frame["message"]
    assert msg["topic"] == topic, frame
    assert isinstance(msg["id"], str) and msg["id"], frame
    assert TS_RE.match(msg["timestamp"]), frame
    assert isinstance(msg["seq"], int), frame
    if seq is not None:
        assert msg["seq"] == seq, f"expected seq {seq}, got {frame}"
    return msg


# ---------------------------------------------------------------------------------------------
# Raw WebSocket client: reads frames byte by byte so corruption cannot hide


class RawClosed(Exception):
    def __init__(self, code: int | None, reason: str = ""):
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code


class HandshakeRefused(Exception):
    def __init__(self, status: int, head: bytes):
        super().__init__(f"handshake answered {status}: {head[:200]!r}")
        self.status = status


class RawWS:
    """A minimal, strict RFC 6455 client over a plain socket (answers pings, validates frames)."""

    def __init__(
        self,
        port: int,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self._parts: list[bytes] = []
        self._first_op: int | None = None
        path = "/ws" + (f"?{urllib.parse.urlencode({'token': token})}" if token else "")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            self.sock.close()
            raise HandshakeRefused(status, head)
        hdrs = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        expected = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        assert hdrs.get("sec-websocket-accept") == expected, hdrs
        assert "sec-websocket-extensions" not in hdrs, f"extension we did not offer: {hdrs}"

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no data") from None
        if not chunk:
            raise RawClosed(None, "EOF without close frame")
        self.buf += chunk

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(client_frame(opcode, payload, fin))

    def send_json(self, obj: Any) -> None:
        self.send_frame(0x1, json.dumps(obj).encode())

    def _buffered_frame(self) -> tuple[int, int] | None:
        """Validate the buffered frame header; return (header, payload) sizes once it is whole."""
        buf = self.buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        assert not b0 & 0x70, f"corrupt frame: RSV bits set (byte0={b0:#x})"
        assert b0 & 0x0F in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA), f"corrupt frame: opcode {b0:#x}"
        assert not b1 & 0x80, "corrupt frame: server frame is masked"
        head, n = 2, b1 & 0x7F
        if n == 126:
            if len(buf) < 4:
                return None
            head, n = 4, struct.unpack_from("!H", buf, 2)[0]
        elif n == 127:
            if len(buf) < 10:
                return None
            head, n = 10, struct.unpack_from("!Q", buf, 2)[0]
            assert n < 1 << 31, f"corrupt frame: length {n}"
        if b0 & 0x08:
            assert b0 & 0x80 and n <= 125, f"corrupt control frame: byte0={b0:#x} len={n}"
        return (head, n) if len(buf) >= head + n else None

    def read_frame(self, timeout: float = 5.0) -> tuple[bool, int, bytes]:
        """Read one whole frame (nothing is consumed on timeout) and check it is legal."""
        deadline = time.monotonic() + timeout
        while (sizes := self._buffered_frame()) is None:
            self._fill(deadline)
        head, n = sizes
        b0 = self.buf[0]
        payload, self.buf = self.buf[head : head + n], self.buf[head + n :]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_message(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """Next data message (fragments joined); answers pings; raises RawClosed on close.

        A timeout keeps the fragments read so far, so the next call resumes the message.
        """
        deadline = time.monotonic() + timeout
        while True:
            fin, op, payload = self.read_frame(max(0.01, deadline - time.monotonic()))
            if op == 0x9:
                self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise RawClosed(code, payload[2:].decode("utf-8", "replace"))
            if self._first_op is None:
                assert op in (0x1, 0x2), f"corrupt stream: continuation without start (op {op})"
                self._first_op = op
            else:
                assert op == 0x0, f"corrupt stream: new message op {op} inside a fragmented one"
            self._parts.append(payload)
            if fin:
                first_op, data = self._first_op, b"".join(self._parts)
                self._first_op, self._parts = None, []
                return first_op, data

    def recv_json(self, timeout: float = 5.0) -> dict:
        """Next text message parsed as a JSON object (strictly UTF-8 and JSON)."""
        op, data = self.recv_message(timeout)
        assert op == 0x1, f"expected a text frame, got opcode {op}: {data[:80]!r}"
        frame = json.loads(data.decode("utf-8"))
        assert isinstance(frame, dict), frame
        return frame

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    if not n:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def post_from(port: int, ip: str, path: str, body: dict, timeout: float = 10.0) -> Response:
    """POST JSON from source address `ip` (any of 127.0.0.0/8) on a new TCP connection."""
    conn = HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(ip, 0))
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def read_head(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """Read a raw HTTP response's head; return its status, headers and what followed it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"server closed without a full response: {buf!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers, rest


def read_body(sock: socket.socket, body: bytes, length: int, deadline: float) -> bytes:
    """Read until `body` holds `length` bytes."""
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"server closed mid-body: {body!r}"
        body += chunk
    return body
