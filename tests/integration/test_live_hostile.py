"""Hostile clients against a real gunicorn (docs/configuration.md "Limits"), on both brokers.

One gateway per broker runs every attack with the limits below set explicitly (harness.Server
turns rate limits and per-user quotas off by default). The Redis gateway runs two workers,
so its attacks cross processes as they would in production.

Every attack ends with the check that matters (`Witness.check`): a well-behaved subscriber,
connected and subscribed since before the attack, receives what a well-behaved publisher
sends afterwards, in seq order with no gap; GET /readyz answers 200; no worker died; and the
workers' resident memory grew by less than a stated bound over the attack.

Registration and login are limited per client address (LOGIN_RATE_LIMIT), so every account
is registered from a loopback address of its own (Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import (
    PASSWORD,
    Client,
    RawClosed,
    RawWS,
    Response,
    Server,
    check_event,
    client_frame,
    http,
    http_full,
    post_from,
    read_body,
    read_head,
    read_until,
    stats_topic,
    unique,
    wait_until,
    ws_connect,
)

# tests/ holds redis_server.py; make it importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_server import RedisServer, redis_binary  # noqa: E402

MiB = 1 << 20

MAX_JSON_DEPTH = 32
PUBLISH_BURST = 50  # PUBLISH_RATE_LIMIT=50/second: a burst of 50, then 50 a second
LOGIN_BUDGET = 5  # LOGIN_RATE_LIMIT=5/minute
MAX_TOPICS = 50
MAX_TOPICS_PER_USER = 5
MAX_SUBSCRIPTIONS = 5
MAX_CONNECTIONS = 4
RING_BUFFER_BYTES = 1 * MiB

LIMITS = {
    "MAX_JSON_DEPTH": MAX_JSON_DEPTH,
    "PUBLISH_RATE_LIMIT": f"{PUBLISH_BURST}/second",
    "LOGIN_RATE_LIMIT": f"{LOGIN_BUDGET}/minute",
    "MAX_TOPICS": MAX_TOPICS,
    "MAX_TOPICS_PER_USER": MAX_TOPICS_PER_USER,
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": MAX_SUBSCRIPTIONS,
    "MAX_CONNECTIONS_PER_USER": MAX_CONNECTIONS,
    "RING_BUFFER_BYTES": RING_BUFFER_BYTES,
    "SUBSCRIBER_QUEUE_SIZE": 100,
    "WRITE_TIMEOUT_SECONDS": 2,
    "HEARTBEAT_INTERVAL": 30,
    "SHUTDOWN_GRACE_SECONDS": 2,
}

# Bounds on the growth of the gateway workers' resident memory (VmRSS, summed over the
# workers) from just before an attack to just after it, measured on a 2-core host.
# Attacks that should leave nothing behind measured 0-0.5 MiB on both brokers. An outbox
# that queued every pong of the ping flood (~110k frames) would hold ~25 MiB.
RSS_GROWTH_LIMIT = 16 * MiB
# The memory bombs fill BOMB_TOPICS histories of RING_BUFFER_BYTES each (8 MiB, held in
# the worker with the memory broker, in Redis otherwise) and leave allocator slack from 6 MB
# of bodies. Measured: memory broker over HTTP 26-31 MiB (levelling off at ~33 MiB when the
# bomb is repeated, so slack, not a leak), over WebSocket 7-10 MiB; Redis 0-3.3 MiB. Ten
# times the 8 MiB that may legitimately stay (or payloads kept as Python objects, ~25x
# their encoded size) blows through it.
BOMB_RSS_GROWTH_LIMIT = 64 * MiB

# The memory bomb: a ~60 KiB body of many tiny lists, depth 2, under MAX_MESSAGE_BYTES.
BOMB_PAYLOAD_BYTES = 60 * 1024
BOMB_PUBLISHES = 100
# 12-13 bombs a topic: every history is full (it counts payload and frame: ~8 bombs in 1 MiB).
BOMB_TOPICS = 8

# What the attacks measured, printed for the record (run with -s to see it).
MEASURED: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------
# Accounts from addresses of their own


_ADDRESSES = (f"127.{a}.{b}.{c}" for a in range(90, 100) for b in range(256) for c in range(1, 255))
_ADDRESSES_LOCK = threading.Lock()  # new_users registers from several threads


def fresh_address() -> str:
    """Return a loopback address that no request of this run has come from yet."""
    with _ADDRESSES_LOCK:
        return next(_ADDRESSES)


# ---------------------------------------------------------------------------------------------
# Processes and memory


def worker_pids(server: Server) -> list[int]:
    """Return the pids of the gunicorn workers (the children of the master)."""
    master = server.proc.pid
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
        return sorted(int(pid) for pid in text.split())
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry.name))
        return sorted(pids)


def rss_bytes(pid: int) -> int:
    """Return the resident set size (VmRSS) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def workers_rss(server: Server) -> int:
    return sum(rss_bytes(pid) for pid in worker_pids(server))


def worker_holding(sock: socket.socket, server: Server) -> int | None:
    """Return the pid of the worker holding the server end of a client socket."""
    client_port = sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == server.port and remote_port == client_port:
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in worker_pids(server):
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return pid
    return None


# ---------------------------------------------------------------------------------------------
# The gateways


@dataclass
class Gateway:
    kind: str
    server: Server
    redis: RedisServer | None
    witness_token: str = ""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def new_user(self) -> str:
        """Register a fresh user from an address of its own; return its token."""
        resp = post_from(
            self.port,
            fresh_address(),
            "/users/register",
            {"username": unique("u"), "password": PASSWORD},
        )
        assert resp.status == 201, (resp.status, resp.body)
        return resp.json["token"]

    def new_users(self, count: int) -> list[str]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: self.new_user(), range(count), timeout=60))

    def workers(self) -> list[int]:
        return worker_pids(self.server)


def _start_gateway(kind: str, workdir: Path) -> tuple[Server, RedisServer | None]:
    env = dict(LIMITS)
    redis = None
    workers = 1
    if kind == "redis":
        redis_binary()  # skips (fails under CI) when there is none
        (workdir / "redis").mkdir()
        redis = RedisServer(workdir / "redis").start()
        workers = 2
        env.update(BROKER_URL=redis.url, WEB_CONCURRENCY=workers)
    server = Server(workdir, env=env)
    try:
        server.start(timeout=30)
        wait_until(
            lambda: len(_booted_workers(server)) == workers,
            30,
            what=f"{workers} booted workers",
        )
    except BaseException:
        server.close()
        if redis is not None:
            redis.stop()
        raise
    return server, redis


def _booted_workers(server: Server) -> list[int]:
    """Return the worker pids once each has logged its boot, else []."""
    booted = server.log_text().count("Booting worker")
    pids = worker_pids(server)
    return pids if booted >= len(pids) else []


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(request, tmp_path_factory) -> Iterator[Gateway]:
    """One gateway per broker with the limits above (Redis: two workers)."""
    workdir = tmp_path_factory.mktemp(f"hostile-{request.param}")
    server, redis = _start_gateway(request.param, workdir)
    gw = Gateway(request.param, server, redis)
    try:
        gw.witness_token = gw.new_user()
        _warm_up(gw)
        yield gw
    finally:
        server.close()
        if redis is not None:
            redis.stop()


def _warm_up(gw: Gateway) -> None:
    """Run every code path once, on every worker, so that the first attack's RSS is fair."""
    token = gw.witness_token
    name = unique("warm")
    assert http("POST", gw.url + "/topics", {"name": name}, token=token)[0] == 201
    for _ in range(6):  # new TCP connections: both workers get some
        with ws_connect(gw.server, token) as sub, ws_connect(gw.server, token) as pub:
            sub.subscribe(name)
            pub.publish(name, {"warm": [1, 2, 3]})
            sub.events(1)
        http("POST", gw.url + f"/topics/{name}/messages", {"payload": "w"}, token=token)
        http("GET", gw.url + f"/topics/{name}/messages", token=token)
        http("GET", gw.url + "/readyz")
    # A full history of big bodies, once: the allocator's high-water mark for them is paid
    # here, so that an attack's RSS growth shows what it keeps rather than first-touch slack.
    bomb = publish_text(name, "warm-bomb", bomb_payload(), "warm-bomb")
    with ws_connect(gw.server, token) as pub:
        for _ in range(20):
            pub.send(bomb)
            assert pub.recv(timeout=10)["type"] == "ack"
            resp = http_full(
                "POST",
                gw.url + f"/topics/{name}/messages",
                raw=('{"payload":' + bomb_payload() + "}").encode(),
                token=token,
            )
            assert resp.status == 201, (resp.status, resp.body[:200])
    assert http("DELETE", gw.url + f"/topics/{name}", token=token)[0] == 200


@pytest.fixture
def owned(gateway) -> Iterator[Callable[..., str]]:
    """Create topics (owned(token, name=None) -> name); every one is deleted afterwards."""
    created: list[tuple[str, str]] = []

    def make(token: str, name: str | None = None) -> str:
        name = name or unique("topic")
        status, body = http("POST", gateway.url + "/topics", {"name": name}, token=token)
        assert status == 201, (status, body)
        created.append((token, name))
        return name

    yield make
    for token, name in created:
        with contextlib.suppress(OSError):
            http("DELETE", gateway.url + f"/topics/{urllib.parse.quote(name)}", token=token)


# ---------------------------------------------------------------------------------------------
# The check that matters


def assert_ready(gw: Gateway, times: int = 3) -> None:
    """GET /readyz answers 200 ready with every check ok (on new connections: any worker)."""
    for _ in range(times):
        status, body = http("GET", gw.url + "/readyz")
        assert status == 200, (status, body, gw.server.log_tail())
        assert body["status"] == "ready", body
        checks = body["checks"]
        assert isinstance(checks, dict) and checks, body
        assert all(value == "ok" for value in checks.values()), body


@dataclass
class Witness:
    """A well-behaved subscriber of a topic of its own, there since before the attack."""

    gw: Gateway
    topic: str = ""
    sub: Client | None = None
    last_seq: int = 0
    rss_before: int = 0
    pids: list[int] = field(default_factory=list)

    def start(self) -> Witness:
        gw = self.gw
        self.topic = unique("witness")
        status, body = http(
            "POST", gw.url + "/topics", {"name": self.topic}, token=gw.witness_token
        )
        assert status == 201, (status, body)
        self.sub = ws_connect(gw.server, gw.witness_token)
        self.sub.subscribe(self.topic)
        self.last_seq = self._publish_and_receive(1)
        self.pids = gw.workers()
        self.rss_before = workers_rss(gw.server)
        return self

    def _publish_and_receive(self, count: int) -> int:
        """Publish count events from a fresh, polite publisher; check the witness gets them."""
        with ws_connect(self.gw.server, self.gw.witness_token) as pub:
            acks = [pub.publish(self.topic, {"n": i}, msg_id=f"w-{i}") for i in range(count)]
        seqs = [ack["seq"] for ack in acks]
        first = self.last_seq + 1
        assert seqs == list(range(first, first + count)), f"publisher acks: {seqs}"
        frames = self.sub.events(count, timeout=10)
        got = [check_event(frame, self.topic)["seq"] for frame in frames]
        assert got == seqs, f"the witness got seqs {got}, expected {seqs}"
        assert [frame["message"]["payload"] for frame in frames] == [{"n": i} for i in range(count)]
        return seqs[-1]

    def check(self, label: str, rss_limit: int = RSS_GROWTH_LIMIT) -> None:
        """After the attack: delivery in order with no gap, /readyz 200, bounded memory."""
        gw = self.gw
        assert gw.server.proc.poll() is None, gw.server.log_tail()
        self.last_seq = self._publish_and_receive(5)
        assert_ready(gw)
        assert gw.workers() == self.pids, (
            f"a worker died or was replaced: {self.pids} -> {gw.workers()}\n{gw.server.log_tail()}"
        )
        growth = workers_rss(gw.server) - self.rss_before
        MEASURED[f"{label}[{gw.kind}]"] = growth / MiB
        print(f"\nRSS growth {label}[{gw.kind}]: {growth / MiB:.1f} MiB")
        assert growth < rss_limit, (
            f"workers' RSS grew by {growth / MiB:.1f} MiB over the attack "
            f"(bound {rss_limit / MiB:.0f} MiB)"
        )

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
        if self.topic:
            with contextlib.suppress(OSError):
                http("DELETE", self.gw.url + f"/topics/{self.topic}", token=self.gw.witness_token)


@pytest.fixture
def witness(gateway) -> Iterator[Witness]:
    w = Witness(gateway)
    try:
        yield w.start()
    finally:
        w.close()


# ---------------------------------------------------------------------------------------------
# Wire helpers


def nested(depth: int) -> str:
    """JSON text of lists nested `depth` deep (`[]` is depth 1)."""
    return "[" * depth + "]" * depth


def publish_text(topic: str, request_id: str, payload_json: str, msg_id: str) -> str:
    """A publish frame with the payload's JSON text spliced in (no recursion in json.dumps)."""
    frame = {
        "type": "publish",
        "topic": topic,
        "request_id": request_id,
        "message": {"id": msg_id, "payload": "__PAYLOAD__"},
    }
    return json.dumps(frame).replace('"__PAYLOAD__"', payload_json)


def flood(sock: socket.socket, frame: bytes, count: int, per_send: int = 500) -> int:
    """Send `frame` count times in big writes; return how many went out before an error."""
    sock.settimeout(20)
    chunk = frame * per_send
    sent = 0
    try:
        while sent < count:
            n = min(per_send, count - sent)
            sock.sendall(chunk if n == per_send else frame * n)
            sent += n
    except OSError:
        pass  # the server gave up on us first: what the test is about
    return sent


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[int | None, int]:
    """Read (cheaply) until the server's close frame, EOF or a reset.

    Return (close code or None when no close frame came, bytes read).
    """
    deadline = time.monotonic() + timeout
    buf = bytearray()
    pos = total = 0
    while True:
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            head, n = 2, b1 & 0x7F
            if n == 126:
                if len(buf) - pos < 4:
                    break
                head, n = 4, struct.unpack_from("!H", buf, pos + 2)[0]
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                head, n = 10, struct.unpack_from("!Q", buf, pos + 2)[0]
            if len(buf) - pos < head + n:
                break
            if b0 & 0x0F == 0x8:
                body = bytes(buf[pos + head : pos + head + n])
                return (struct.unpack("!H", body[:2])[0] if n >= 2 else None), total
            pos += head + n
        if pos > MiB:
            del buf[:pos]
            pos = 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server did not close within {timeout}s ({total} B read)")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(MiB)
        except (ConnectionResetError, BrokenPipeError):
            return None, total
        except TimeoutError:
            continue
        if not chunk:
            return None, total
        total += len(chunk)
        buf += chunk


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    sock: socket.socket | None  # still open: an upgraded WebSocket or an event stream

    @property
    def json(self):
        return json.loads(self.body)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()


def raw_get(port: int, target: str, headers: dict[str, str], timeout: float = 5.0) -> RawReply:
    """GET target on a new connection; keep the socket of a 101 or an event stream open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    deadline = time.monotonic() + timeout
    try:
        status, hdrs, body = read_head(sock, deadline)
        if status == 101 or hdrs.get("content-type", "").startswith("text/event-stream"):
            return RawReply(status, hdrs, body, sock)
        body = read_body(sock, body, int(hdrs.get("content-length", "0")), deadline)
    except BaseException:
        sock.close()
        raise
    sock.close()
    return RawReply(status, hdrs, body, None)


def upgrade_headers(**changes: str | None) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


def try_upgrade(gw: Gateway, token: str) -> RawReply:
    return raw_get(gw.port, "/ws?" + urllib.parse.urlencode({"token": token}), upgrade_headers())


def try_sse(gw: Gateway, token: str, topic: str, in_query: bool = False) -> RawReply:
    if in_query:
        target = f"/topics/{topic}/events?" + urllib.parse.urlencode({"token": token})
        return raw_get(gw.port, target, {"Accept": "text/event-stream"})
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}
    return raw_get(gw.port, f"/topics/{topic}/events", headers)


def assert_limit_exceeded(reply: RawReply | Response, what: str) -> None:
    assert reply.status == 429, (what, reply.status, reply.body[:300])
    body = json.loads(reply.body)
    assert body.get("code") == "LIMIT_EXCEEDED", (what, body)
    assert isinstance(body.get("error"), str) and body["error"], (what, body)


def assert_rate_limited(resp: Response) -> None:
    assert resp.status == 429, (resp.status, resp.body[:300])
    assert resp.json.get("code") == "RATE_LIMITED", resp.json
    assert isinstance(resp.json.get("error"), str), resp.json
    retry_after = resp.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) >= 1, resp.headers


def http_publish(gw: Gateway, token: str, topic: str, body: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key is not None else None
    return http_full(
        "POST", gw.url + f"/topics/{topic}/messages", body, token=token, headers=headers
    )


def history(gw: Gateway, token: str, topic: str) -> list[dict]:
    status, body = http("GET", gw.url + f"/topics/{topic}/messages?limit=1000", token=token)
    assert status == 200, (status, body)
    return body["messages"]


def assert_consecutive(seqs: list[int], first: int | None = None) -> None:
    assert seqs, "no seqs"
    start = seqs[0] if first is None else first
    assert seqs == list(range(start, start + len(seqs))), f"seqs not consecutive: {seqs}"


# ---------------------------------------------------------------------------------------------
# 1-2. Deep JSON


def test_deep_json_over_websocket_is_refused_without_spending_a_seq(gateway, owned, witness):
    attacker = gateway.new_user()
    topic = owned(attacker)
    refusals = []
    with ws_connect(gateway.server, attacker) as pub, ws_connect(gateway.server, attacker) as sub:
        sub.subscribe(topic)
        accepted = [pub.publish(topic, "before")["seq"]]
        # Payload depths: the frame is two deeper. 31 -> 33, one over; 253 -> 255, the old
        # worker-killer (orjson cannot encode it again); 2000 -> past orjson's own parser.
        for depth in (MAX_JSON_DEPTH - 1, 253, 2000):
            rid = f"deep-{depth}"
            pub.send(publish_text(topic, rid, nested(depth), f"m-{depth}"))
            reply = pub.recv(timeout=5)
            assert reply["type"] == "error", (depth, reply)
            assert reply["error"]["code"] == "BAD_REQUEST", (depth, reply)
            refusals.append((depth, rid, reply))
            # The socket is open and no seq was spent on the refused frame.
            seq = pub.publish(topic, f"after-{depth}")["seq"]
            assert seq == accepted[-1] + 1, f"a refused frame of depth {depth + 2} spent a seq"
            accepted.append(seq)
        # Exactly MAX_JSON_DEPTH deep is accepted and delivered intact.
        pub.send(publish_text(topic, "depth-32", nested(MAX_JSON_DEPTH - 2), "m-32"))
        ack = pub.recv(timeout=5)
        assert ack["type"] == "ack" and ack["request_id"] == "depth-32", ack
        assert ack["seq"] == accepted[-1] + 1, ack
        accepted.append(ack["seq"])
        events = sub.events(len(accepted))
        assert [check_event(f, topic)["seq"] for f in events] == accepted
        assert events[-1]["message"]["payload"] == json.loads(nested(MAX_JSON_DEPTH - 2))
        assert sub.quiet(0.3) == [], "a refused publish reached a subscriber"
    witness.check("deep-json-ws")
    # request_id is echoed whenever the frame could be parsed at all (orjson: 1024 levels).
    for depth, rid, reply in refusals:
        if depth + 2 <= 1024:
            assert reply.get("request_id") == rid, (
                f"the BAD_REQUEST for a frame of depth {depth + 2} does not echo "
                f"request_id {rid!r}: {reply}"
            )


def test_deep_json_over_http_is_a_400_and_history_holds_only_accepted(gateway, owned, witness):
    attacker = gateway.new_user()
    topic = owned(attacker)
    url = gateway.url + f"/topics/{topic}/messages"

    def post(payload_json: str):
        raw = ('{"payload":' + payload_json + "}").encode()
        return http_full(
            "POST", url, raw=raw, token=attacker, headers={"Content-Type": "application/json"}
        )

    seqs = []
    for depth in (MAX_JSON_DEPTH, 253, 2000):  # the body is one deeper than its payload
        resp = post(nested(depth))
        assert resp.status == 400, (depth, resp.status, resp.body[:300])
        assert isinstance(resp.json, dict) and isinstance(resp.json.get("error"), str), resp.body
        ok = post('"fine"')
        assert ok.status == 201, (ok.status, ok.body)
        seqs.append(ok.json["seq"])
    exact = post(nested(MAX_JSON_DEPTH - 1))  # body depth exactly MAX_JSON_DEPTH
    assert exact.status == 201, (exact.status, exact.body[:300])
    seqs.append(exact.json["seq"])
    assert_consecutive(seqs, first=1)
    messages = history(gateway, attacker, topic)
    assert [m["seq"] for m in messages] == seqs
    assert messages[-1]["payload"] == json.loads(nested(MAX_JSON_DEPTH - 1))
    witness.check("deep-json-http")


# ---------------------------------------------------------------------------------------------
# 3. Publish floods


def test_websocket_publish_flood_is_rate_limited_with_one_reply_each(gateway, owned, witness):
    attacker, reader = gateway.new_users(2)
    topic = owned(attacker)
    total = 500
    with ws_connect(gateway.server, reader) as sub, ws_connect(gateway.server, attacker) as pub:
        sub.subscribe(topic)
        rids = [f"flood-{i}" for i in range(total)]
        for i, rid in enumerate(rids):  # pipelined: no waiting for acks
            pub.send(
                {
                    "type": "publish",
                    "topic": topic,
                    "request_id": rid,
                    "message": {"id": f"m-{i}", "payload": i},
                }
            )
        replies: dict[str, list[dict]] = {}
        order: list[str] = []

        def take(frame: dict) -> None:
            rid = frame.get("request_id")
            assert rid in replies or rid in rids, f"unexpected frame {frame}"
            replies.setdefault(rid, []).append(frame)
            order.append(rid)

        read_until(pub.recv, take, lambda: len(replies) == total, idle=15)
        assert pub.barrier() == [], "more replies than publishes"
        assert all(len(v) == 1 for v in replies.values()), "a publish got two replies"
        acks = [replies[rid][0] for rid in rids if replies[rid][0]["type"] == "ack"]
        refused = [replies[rid][0] for rid in rids if replies[rid][0]["type"] != "ack"]
        for frame in refused:
            assert frame["type"] == "error", frame
            assert frame["error"]["code"] == "RATE_LIMITED", frame
            assert "seq" not in frame, frame
        # The burst is the count: the first PUBLISH_BURST are all accepted.
        first = [replies[rid][0]["type"] for rid in rids[:PUBLISH_BURST]]
        assert first == ["ack"] * PUBLISH_BURST, first
        assert refused, f"{total} pipelined publishes and none was rate limited"
        seqs = [a["seq"] for a in acks]
        assert_consecutive(seqs, first=1)
        pub.ping()  # the connection is open
        # Subscribers see exactly the accepted ones, in order.
        events = sub.events(len(seqs), timeout=10)
        assert [check_event(f, topic)["seq"] for f in events] == seqs
        assert sub.quiet(0.3) == []
    MEASURED[f"ws-flood-accepted[{gateway.kind}]"] = len(seqs)
    witness.check("publish-flood-ws")


def test_http_publish_flood_gets_429_and_spares_other_users(gateway, owned, witness):
    flooder, bystander = gateway.new_users(2)
    topic = owned(flooder)
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: http_publish(gateway, flooder, topic, {"id": f"f-{i}", "payload": i}),
                range(150),
                timeout=60,
            )
        )
        # While the flooder is refused, someone else publishes as usual.
        other = http_publish(gateway, bystander, topic, {"id": "bystander", "payload": "hi"})
    statuses = [r.status for r in results]
    assert set(statuses) <= {201, 429}, statuses
    assert statuses.count(429) > 0, "150 publishes at once and none was rate limited"
    assert statuses.count(201) >= PUBLISH_BURST, statuses
    for resp in results:
        if resp.status == 429:
            assert_rate_limited(resp)
    assert other.status == 201, (other.status, other.body)
    seqs = sorted([r.json["seq"] for r in results if r.status == 201] + [other.json["seq"]])
    assert_consecutive(seqs, first=1)
    assert [m["seq"] for m in history(gateway, flooder, topic)] == seqs
    witness.check("publish-flood-http")


# ---------------------------------------------------------------------------------------------
# 4-5. Control-frame floods


def test_ping_flood_without_reading_gets_the_connection_closed(gateway, owned, witness):
    attacker = gateway.new_user()
    topic = owned(attacker)
    ws_pings = RawWS(gateway.port, attacker, rcvbuf=4096)
    json_pings = RawWS(gateway.port, attacker, rcvbuf=4096)
    try:
        for raw in (ws_pings, json_pings):
            raw.send_json({"type": "subscribe", "topic": topic, "request_id": "s"})
            ack = raw.recv_json()
            assert ack["type"] == "ack" and ack["request_id"] == "s", ack
        wait_until(
            lambda: (stats_topic(gateway.server, topic) or {}).get("subscribers") == 2,
            10,
            what="both flooders subscribed",
        )
        # ~8 MB of pongs each: far more than the kernel buffers hold for a reader that
        # never reads.
        sent = flood(ws_pings.sock, client_frame(0x9, b"p" * 125), 60_000)
        ping = json.dumps({"type": "ping", "request_id": "p" * 100}).encode()
        sent_json = flood(json_pings.sock, client_frame(0x1, ping), 50_000)
        MEASURED[f"ping-flood-sent[{gateway.kind}]"] = sent + sent_json
        # Still not reading: the server must give up on both and forget them.
        wait_until(
            lambda: (stats_topic(gateway.server, topic) or {}).get("subscribers") == 0,
            30,
            interval=0.2,
            what="the flooders to be gone from /stats",
        )
        for raw in (ws_pings, json_pings):
            code, read = read_until_closed(raw.sock, timeout=20)
            assert code in (4008, None), f"closed with {code}, expected 4008 or a cut"
            print(f"\nping flood [{gateway.kind}]: close code {code} after {read} B of replies")
    finally:
        ws_pings.close()
        json_pings.close()
    # They are counted nowhere: the user can open its full allowance again.
    opened = []
    try:
        for _ in range(MAX_CONNECTIONS):
            reply = wait_until(
                lambda: (r := try_upgrade(gateway, attacker)).status == 101 and r,
                10,
                what="a connection slot",
            )
            opened.append(reply)
    finally:
        for reply in opened:
            reply.close()
    witness.check("ping-flood")


def send_fragmented(sock: socket.socket, text: bytes, fragments: int) -> None:
    """Send text as one message in `fragments` frames: the text, then empty continuations."""
    frames = [client_frame(0x1, text, fin=False)]
    frames += [client_frame(0x0, b"", fin=False)] * (fragments - 2)
    frames.append(client_frame(0x0, b"", fin=True))
    sock.sendall(b"".join(frames))


def test_fragment_flood_closes_1009_but_1000_fragments_pass(gateway, witness):
    attacker = gateway.new_user()
    fine = RawWS(gateway.port, attacker)
    flooder = RawWS(gateway.port, attacker)
    try:
        send_fragmented(fine.sock, b'{"type":"ping","request_id":"frag-1000"}', 1000)
        pong = fine.recv_json(timeout=5)
        assert pong["type"] == "pong" and pong["request_id"] == "frag-1000", pong

        send_fragmented(flooder.sock, b'{"type":"ping","request_id":"frag-1101"}', 1101)
        frames = []
        with pytest.raises(RawClosed) as closed:
            while len(frames) < 10:
                frames.append(flooder.recv_json(timeout=5))
        assert closed.value.code == 1009, (closed.value, frames)
        assert not [f for f in frames if f.get("type") == "pong"], frames
        # The well-behaved connection of the same user is untouched.
        fine.send_json({"type": "ping", "request_id": "after"})
        assert fine.recv_json(timeout=5)["request_id"] == "after"
    finally:
        fine.close()
        flooder.close()
    witness.check("fragment-flood")


# ---------------------------------------------------------------------------------------------
# 6. Memory bombs


def bomb_payload() -> str:
    count = (BOMB_PAYLOAD_BYTES - 2) // 3
    return "[" + ",".join(["[]"] * count) + "]"


def assert_ring_bounded(gw: Gateway, token: str, topic: str, last_seq: int) -> None:
    messages = history(gw, token, topic)
    seqs = [m["seq"] for m in messages]
    assert messages and seqs[-1] == last_seq, seqs
    assert_consecutive(seqs)
    assert len(messages) * BOMB_PAYLOAD_BYTES <= RING_BUFFER_BYTES, (
        f"the history holds {len(messages)} bombs of {BOMB_PAYLOAD_BYTES} B: more than "
        f"RING_BUFFER_BYTES={RING_BUFFER_BYTES}"
    )
    assert len(messages[-1]["payload"]) == (BOMB_PAYLOAD_BYTES - 2) // 3


# ---------------------------------------------------------------------------------------------
# 7. Log injection


def test_log_injection_cannot_forge_lines(gateway, witness):
    marker = unique("forged")
    attacker = gateway.new_user()
    paths = {
        "lf": f"/nope%0aINFO%20{marker}-lf",
        "cr": f"/nope%0dINFO%20{marker}-cr",
        "crlf": f"/nope%0d%0aINFO%20{marker}-crlf",
        "topic": f"/topics/x%0aINFO%20{marker}-topic/messages",
    }
    for path in paths.values():
        resp = http_full("GET", gateway.url + path, token=attacker)
        assert 400 <= resp.status < 500, (path, resp.status, resp.body[:200])
        assert isinstance(resp.json, dict) and isinstance(resp.json.get("error"), str), resp.body
    rid = f"r\nINFO {marker}-ws\rINFO {marker}-ws-cr"
    with ws_connect(gateway.server, attacker) as ws:
        reply = ws.call({"type": "bogus", "request_id": rid})
        assert reply["type"] == "error" and reply["request_id"] == rid, reply
        reply = ws.call({"type": "subscribe", "topic": f"t\nINFO {marker}-wstopic"})
        assert reply["type"] == "error", reply
    login = post_from(
        gateway.port,
        fresh_address(),
        "/users/login",
        {"username": f"u\nINFO {marker}-user", "password": "wrong-password"},
    )
    assert login.status in (400, 401), (login.status, login.body)

    expected = [f"{marker}-{name}" for name in ("lf", "cr", "crlf", "ws")]
    wait_until(
        lambda: all(text in gateway.server.log_text() for text in expected),
        10,
        what=f"the log to mention {expected}",
    )
    forged = [
        line for line in gateway.server.log_text().splitlines() if line.startswith("INFO " + marker)
    ]
    assert forged == [], f"forged log lines: {forged}"
    witness.check("log-injection")


# ---------------------------------------------------------------------------------------------
# 8. Idempotency keys


def test_a_squatted_idempotency_key_does_not_hijack_anothers_publish(gateway, owned, witness):
    alice, bob = gateway.new_users(2)
    topic = owned(alice)
    key = unique("key")
    first = http_publish(gateway, alice, topic, {"id": "alice-1", "payload": "a"}, key)
    assert first.status == 201, (first.status, first.body)
    squat = http_publish(gateway, bob, topic, {"id": "bob-1", "payload": "b"}, key)
    assert squat.status == 201, (squat.status, squat.body)
    assert squat.json["id"] == "bob-1" and squat.json["seq"] != first.json["seq"], (
        f"bob's publish with alice's key got alice's message: {squat.json}"
    )
    retry = http_publish(gateway, alice, topic, {"id": "alice-1", "payload": "a"}, key)
    assert retry.status in (200, 201), (retry.status, retry.body)
    assert (retry.json["seq"], retry.json["id"]) == (first.json["seq"], "alice-1"), retry.json
    messages = history(gateway, alice, topic)
    assert [(m["id"], m["payload"]) for m in messages] == [("alice-1", "a"), ("bob-1", "b")]

    # Keys are scoped by topic without ambiguity: "X:b" + "c" is not "X" + "b:c".
    base = unique("colon")
    with_colon = owned(alice, f"{base}:b")
    plain = owned(alice, base)
    one = http_publish(gateway, alice, with_colon, {"id": "one", "payload": 1}, "c")
    two = http_publish(gateway, alice, plain, {"id": "two", "payload": 2}, "b:c")
    assert one.status == 201 and two.status == 201, (one.body, two.body)
    assert (one.json["topic"], one.json["id"], one.json["seq"]) == (with_colon, "one", 1)
    assert (two.json["topic"], two.json["id"], two.json["seq"]) == (plain, "two", 1), two.json
    assert [m["id"] for m in history(gateway, alice, plain)] == ["two"]
    witness.check("idempotency-squat")


# ---------------------------------------------------------------------------------------------
# 9-11. Quotas


def create(gw: Gateway, token: str, name: str) -> Response:
    return http_full("POST", gw.url + "/topics", {"name": name}, token=token)


def delete(gw: Gateway, token: str, name: str) -> None:
    status, body = http("DELETE", gw.url + f"/topics/{name}", token=token)
    assert status == 200, (status, body)


def test_topics_per_user_quota(gateway, owned, witness):
    hoarder = gateway.new_user()
    names = [owned(hoarder) for _ in range(MAX_TOPICS_PER_USER)]
    extra = unique("extra")
    assert_limit_exceeded(create(gateway, hoarder, extra), "topic past MAX_TOPICS_PER_USER")
    delete(gateway, hoarder, names[0])
    owned(hoarder, extra)  # the freed slot is usable
    assert_limit_exceeded(create(gateway, hoarder, unique("extra")), "again at the quota")
    witness.check("topics-per-user")


def test_gateway_wide_topic_quota(gateway, owned, witness):
    status, health = http("GET", gateway.url + "/health")
    assert status == 200, health
    room = MAX_TOPICS - health["topics"]
    assert room > 0, f"{health['topics']} topics already: an earlier test leaked topics"
    users = gateway.new_users(-(-room // MAX_TOPICS_PER_USER) + 1)
    names = []
    for i in range(room):
        names.append(owned(users[i // MAX_TOPICS_PER_USER]))
    last_user = users[-1]  # owns nothing: only the gateway-wide limit can refuse it
    extra = unique("over")
    assert_limit_exceeded(create(gateway, last_user, extra), "topic past MAX_TOPICS")
    delete(gateway, users[0], names[0])
    owned(last_user, extra)
    assert_limit_exceeded(create(gateway, last_user, unique("over")), "again at MAX_TOPICS")
    witness.check("topics-gateway-wide")


def test_subscriptions_per_connection_quota(gateway, owned, witness):
    owner, helper = gateway.new_users(2)
    topics = [owned(owner) for _ in range(MAX_SUBSCRIPTIONS)] + [owned(helper)]
    with ws_connect(gateway.server, owner) as ws:
        for topic in topics[:MAX_SUBSCRIPTIONS]:
            ws.subscribe(topic)
        refused = ws.call({"type": "subscribe", "topic": topics[-1]})  # request_id checked
        assert refused["type"] == "error", refused
        assert refused["error"]["code"] == "LIMIT_EXCEEDED", refused
        ws.ping()
        ws.subscribe(topics[0])  # already followed: still an ack
        ws.unsubscribe(topics[1])
        ws.subscribe(topics[-1])  # the freed slot
        with ws_connect(gateway.server, helper) as pub:
            seq = pub.publish(topics[-1], "to the sixth")["seq"]
        check_event(ws.recv(timeout=5), topics[-1], seq)
    witness.check("subscriptions-per-connection")


def test_connections_per_user_quota_counts_websockets_and_sse(gateway, owned, witness):
    user = gateway.new_user()
    topic = owned(user)
    held: list[RawReply] = []
    try:
        for _ in range(MAX_CONNECTIONS - 1):
            reply = try_upgrade(gateway, user)
            assert reply.status == 101, (reply.status, reply.body)
            held.append(reply)
        sse = try_sse(gateway, user, topic, in_query=True)
        assert sse.status == 200, (sse.status, sse.body)
        held.append(sse)
        if gateway.kind == "redis":
            _spread_over_workers(gateway, user, held)
        assert_limit_exceeded(try_upgrade(gateway, user), "a WebSocket past the quota")
        assert_limit_exceeded(try_sse(gateway, user, topic), "an SSE stream past the quota")
        # Closing one frees a slot (the server notices the close by itself).
        held.pop(0).close()
        reply = wait_until(
            lambda: (r := try_upgrade(gateway, user)).status == 101 and r,
            10,
            what="the closed connection's slot",
        )
        held.append(reply)
        assert_limit_exceeded(try_upgrade(gateway, user), "full again")
        held.pop().close()  # an SSE stream's slot too
        sse = wait_until(
            lambda: (r := try_sse(gateway, user, topic)).status == 200 and r,
            10,
            what="a slot for an SSE stream",
        )
        held.append(sse)
        assert_limit_exceeded(try_upgrade(gateway, user), "full with an SSE stream")
    finally:
        for reply in held:
            reply.close()
    witness.check("connections-per-user")


def _spread_over_workers(gw: Gateway, user: str, held: list[RawReply]) -> None:
    """Reopen WebSockets until the user's connections sit on both workers.

    Then no worker holds MAX_CONNECTIONS of them itself, and a refusal proves that the
    count is cluster-wide.
    """
    for _ in range(40):
        where = [worker_holding(reply.sock, gw.server) for reply in held]
        if len(set(where) - {None}) == 2:
            MEASURED[f"connections-spread[{gw.kind}]"] = len(set(where))
            return
        held.pop(0).close()
        held.insert(
            0,
            wait_until(
                lambda: (r := try_upgrade(gw, user)).status == 101 and r,
                10,
                what="a slot to reopen a WebSocket",
            ),
        )
    raise AssertionError(f"every connection landed on one worker ({where}): proves nothing")


# ---------------------------------------------------------------------------------------------
# 12. Malformed handshake; login flood


def test_malformed_handshake_is_a_400_json_error(gateway, witness):
    user = gateway.new_user()
    target = "/ws?" + urllib.parse.urlencode({"token": user})
    reply = raw_get(gateway.port, target, upgrade_headers(**{"Sec-WebSocket-Version": None}))
    assert reply.status == 400, (reply.status, reply.body)
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    assert isinstance(reply.json.get("error"), str), reply.body
    good = try_upgrade(gateway, user)  # and the server upgrades as usual right after
    assert good.status == 101, (good.status, good.body)
    good.close()
    witness.check("malformed-handshake")


def test_login_flood_is_rate_limited_per_address(gateway, witness):
    ip = fresh_address()
    victim = unique("victim")
    results = [
        post_from(gateway.port, ip, "/users/login", {"username": victim, "password": "nope-nope"})
        for _ in range(LOGIN_BUDGET + 10)
    ]
    statuses = [r.status for r in results]
    assert statuses == [401] * LOGIN_BUDGET + [429] * 10, statuses
    for resp in results[LOGIN_BUDGET:]:
        assert_rate_limited(resp)
    witness.check("login-flood")


# ---------------------------------------------------------------------------------------------
# 13. /readyz (last: on Redis it stops and restarts the server)


def _readyz(gw: Gateway) -> tuple[int, dict]:
    try:
        return http("GET", gw.url + "/readyz", timeout=5)
    except OSError as exc:
        return -1, {"exception": repr(exc)}


# ---------------------------------------------------------------------------------------------
# 6. Memory bombs (the tests): last but one, since the allocator slack they leave
# (see BOMB_RSS_GROWTH_LIMIT) would otherwise show up in the RSS growth of the attacks after them.
def test_memory_bomb_over_http_stays_bounded(gateway, owned, witness):
    # Four users, two topics each: PUBLISH_RATE_LIMIT (per user) refuses none of the bomb,
    # and all eight histories fill up.
    bombers = gateway.new_users(4)
    owners = [bombers[i // 2] for i in range(BOMB_TOPICS)]
    topics = [owned(token) for token in owners]
    raw = ('{"payload":' + bomb_payload() + "}").encode()
    assert len(raw) <= 65536
    seqs: dict[str, list[int]] = {topic: [] for topic in topics}
    for i in range(BOMB_PUBLISHES):
        topic = topics[i % BOMB_TOPICS]
        resp = http_full(
            "POST",
            gateway.url + f"/topics/{topic}/messages",
            raw=raw,
            token=owners[i % BOMB_TOPICS],
            headers={"Content-Type": "application/json", "Idempotency-Key": f"bomb-{i}"},
        )
        assert resp.status == 201, (i, resp.status, resp.body[:300])
        seqs[topic].append(resp.json["seq"])
    for token, topic in zip(owners, topics, strict=True):
        assert_consecutive(seqs[topic], first=1)
        assert_ring_bounded(gateway, token, topic, seqs[topic][-1])
    witness.check("memory-bomb-http", BOMB_RSS_GROWTH_LIMIT)


def test_memory_bomb_over_websocket_stays_bounded(gateway, owned, witness):
    # Two users, four topics and one connection each: 50 publishes a connection, its burst.
    bombers = gateway.new_users(2)
    owners = [bombers[i // 4] for i in range(BOMB_TOPICS)]
    topics = [owned(token) for token in owners]
    payload = bomb_payload()
    seqs: dict[str, list[int]] = {topic: [] for topic in topics}
    with ws_connect(gateway.server, bombers[0]) as a, ws_connect(gateway.server, bombers[1]) as b:
        for i in range(BOMB_PUBLISHES):
            client = (a, b)[(i % BOMB_TOPICS) // 4]
            topic = topics[i % BOMB_TOPICS]
            text = publish_text(topic, f"bomb-{i}", payload, f"m-{i}")
            assert len(text.encode()) <= 65536
            client.send(text)
            ack = client.recv(timeout=10)
            assert ack["type"] == "ack" and ack["request_id"] == f"bomb-{i}", ack
            seqs[topic].append(ack["seq"])
    for token, topic in zip(owners, topics, strict=True):
        assert_consecutive(seqs[topic], first=1)
        assert_ring_bounded(gateway, token, topic, seqs[topic][-1])
    witness.check("memory-bomb-ws", BOMB_RSS_GROWTH_LIMIT)


def test_readyz_tells_the_truth(gateway, witness):
    assert_ready(gateway)
    if gateway.kind == "redis":
        gateway.redis.stop()
        try:
            status, body = wait_until(
                lambda: (r := _readyz(gateway))[0] == 503 and r,
                15,
                what="/readyz 503 with Redis stopped",
            )
            assert body["status"] == "unavailable", body
            assert isinstance(body["error"], str) and body["error"], body
            failing = {name for name, value in body["checks"].items() if value != "ok"}
            assert failing & {"broker", "listener"}, body
            assert any(name in body["error"] for name in failing), body
            # A publish now is refused with a clear error and spends no seq.
            resp = http_publish(
                gateway, gateway.witness_token, witness.topic, {"id": "down", "payload": 0}
            )
            assert resp.status == 503, (resp.status, resp.body[:300])
            assert isinstance(resp.json.get("error"), str), resp.body
        finally:
            gateway.redis.start()
        streak = []

        def ready_again() -> bool:
            streak.append(_readyz(gateway)[0])
            return streak[-6:] == [200] * 6  # new connections: both workers said so

        wait_until(ready_again, 30, interval=0.2, what="/readyz back to 200 with Redis up")
    witness.check("readyz")


def teardown_module() -> None:
    if MEASURED:
        width = max(map(len, MEASURED))
        lines = [f"  {name:<{width}}  {value:.1f}" for name, value in sorted(MEASURED.items())]
        print("\nmeasured (RSS growth in MiB; counts):\n" + "\n".join(lines))
