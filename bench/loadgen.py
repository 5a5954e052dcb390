#!/usr/bin/env python3
"""Drive a pub/sub WebSocket server from one asyncio process and print one JSON line.

Fan-out mode (default): S subscribers on one topic, P publishers send M messages in total,
either as fast as a bounded window of outstanding acks allows or at --rate msgs/s.
With --topics N (multi-topic): N fresh topics, each with its own S subscribers, P publishers
and M messages (at --rate msgs/s each), all driven at once from this one process;
deliveries/s and the latency percentiles are over all topics together.
Idle mode (--idle N): N authenticated, subscribed connections that only exchange heartbeats;
reports the server's RSS per connection.

Protocols: gateway (our /ws protocol, REST setup first), ceiling (same frames, no REST, no
auth) and socketio (engine.io v4 over a raw WebSocket, framing done here).
See bench/README.md for what every field of the output means.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gc
import http.client
import os
import resource
import sys
import threading
import time
import urllib.parse
from typing import Any

import orjson
import psutil
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

loads = orjson.loads
dumps = orjson.dumps
time_ns = time.time_ns
TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONT = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE
SUB_RID = "s"
# Fast path for compact event frames, {"type":"event",...,"payload":{"t":N,...},...,"seq":N}:
# a few bytes.find calls instead of a full parse (the client must stay cheaper than the server).
# Anything else (other key order, spaces, no seq) takes the full orjson parse.
EVENT_PREFIX = b'{"type":"event"'
T_KEY = b'"payload":{"t":'
SEQ_KEY = b'"seq":'
MAX_ERROR_SAMPLES = 3  # per error kind


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Stats:
    """Counters shared by every connection of one run."""

    def __init__(self) -> None:
        self.latencies = array.array("q")  # ns, one per received event
        self.events = 0
        self.bad_events = 0
        self.dropped = 0  # sum of info/dropped counts
        self.out_of_order = 0
        self.heartbeats = 0  # server info/ping (gateway, ceiling) or engine.io "2" (socketio)
        self.pongs = 0
        self.acks = 0
        self.publish_errors = 0
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.info_other: dict[str, int] = {}
        self.bad_frames = 0
        self.unexpected_disconnects = 0
        self.close_codes: dict[str, int] = {}
        self.first_publish_ns = 0
        self.last_delivery_ns = 0
        self.last_ack_ns = 0
        self.last_progress = 0.0  # monotonic time of the last event or ack

    def error(self, key: str, detail: str = "") -> None:
        """Count one error under key and keep its first few samples."""
        n = self.errors[key] = self.errors.get(key, 0) + 1
        if detail and n <= MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{key}: {detail}"[:300])


class Conn(WSListener):
    """One WebSocket connection; decodes server frames into Stats."""

    def __init__(self, stats: Stats, proto: str, fast: bool = True) -> None:
        self.st = stats
        self.proto = proto
        self.fast = fast
        self.json_proto = proto != "socketio"
        self.transport: WSTransport | None = None
        self.loop = asyncio.get_running_loop()
        self.pending: dict[Any, asyncio.Future] = {}
        self.ready = self.loop.create_future()  # socketio: namespace connected
        self.partial: bytearray | None = None
        self.partial_type = TEXT
        self.last_seq = -1
        self.events = 0
        self.outstanding = 0
        self.window = 0
        self.window_open = asyncio.Event()
        self.closing = False
        if proto != "socketio":
            self.ready.set_result(True)

    # picows callbacks -------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing:
            self.st.unexpected_disconnects += 1
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("disconnected"))
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before socket.io connect"))
        self.window_open.set()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        try:
            if mt == TEXT and frame.fin and self.json_proto:
                # hot path: a compact event frame, read with a few finds (see EVENT_PREFIX)
                data = frame.get_payload_as_bytes()
                try:
                    if not (self.fast and data.startswith(EVENT_PREFIX)):
                        raise ValueError
                    a = data.index(T_KEY) + len(T_KEY)
                    k = data.rindex(SEQ_KEY) + len(SEQ_KEY)
                    sent_ns = int(data[a : data.index(b",", a)])
                    seq = int(data[k : data.index(b"}", k)])
                except ValueError:  # not a compact event: parse it properly
                    self.handle_json(loads(data))
                    return
                self.record_event(sent_ns, seq)
            elif mt in (TEXT, BINARY):
                if frame.fin:
                    self.handle(frame.get_payload_as_bytes(), mt)
                else:
                    self.partial = bytearray(frame.get_payload_as_bytes())
                    self.partial_type = mt
            elif mt == CONT:
                if self.partial is None:
                    self.st.bad_frames += 1
                    return
                self.partial += frame.get_payload_as_bytes()
                if frame.fin:
                    data, self.partial = bytes(self.partial), None
                    self.handle(data, self.partial_type)
            elif mt == CLOSE:
                code = str(frame.get_close_code().value)
                self.st.close_codes[code] = self.st.close_codes.get(code, 0) + 1
                transport.send_close(frame.get_close_code())
                transport.disconnect()
        except Exception as exc:  # a bad frame is a finding, not a reason to drop the socket
            self.st.bad_frames += 1
            self.st.error("bad_frame", f"{type(exc).__name__}: {exc}")

    # frame handling ---------------------------------------------------------------------
    def record_event(self, sent_ns: int | None, seq: int | None) -> None:
        """Count one event: latency from its payload stamp, order from its seq."""
        now = time_ns()
        st = self.st
        st.events += 1
        self.events += 1
        st.last_delivery_ns = now
        if sent_ns is None:
            st.bad_events += 1
        else:
            st.latencies.append(now - sent_ns)
        if seq is not None:
            if seq <= self.last_seq:
                st.out_of_order += 1
            self.last_seq = seq

    def handle(self, data: bytes, mt: WSMsgType) -> None:
        if mt == BINARY:
            self.st.error("binary_frame")
            return
        if self.proto == "socketio":
            self.handle_socketio(data)
        else:
            self.handle_json(loads(data))

    def handle_json(self, msg: dict) -> None:
        typ = msg.get("type")
        st = self.st
        if typ == "event":
            m = msg["message"]
            payload = m.get("payload")
            sent_ns = payload.get("t") if isinstance(payload, dict) else None
            self.record_event(sent_ns if isinstance(sent_ns, int) else None, m.get("seq"))
        elif typ == "ack":
            self.on_reply(msg.get("request_id"), True, msg)
        elif typ == "info":
            what = msg.get("msg")
            if what == "dropped":
                st.dropped += int(msg.get("count", 0))
            elif what == "ping":
                st.heartbeats += 1
            else:
                st.info_other[str(what)] = st.info_other.get(str(what), 0) + 1
        elif typ == "pong":
            st.pongs += 1
        elif typ == "error":
            err = msg.get("error") or {}
            st.error(f"server_error:{err.get('code')}", str(err.get("message")))
            self.on_reply(msg.get("request_id"), False, msg)
        else:
            st.error("unknown_frame", repr(msg)[:200])

    def on_reply(self, rid: Any, ok: bool, msg: Any) -> None:
        """Route an ack/error to a pending request or to the publish window."""
        fut = self.pending.pop(rid, None)
        if fut is not None:
            if not fut.done():
                if ok:
                    fut.set_result(msg)
                else:
                    fut.set_exception(RuntimeError(f"server refused: {msg!r}"[:300]))
            return
        if self.window:  # a publisher: every other reply is for a publish
            st = self.st
            st.acks += 1
            if not ok:
                st.publish_errors += 1
            st.last_ack_ns = time_ns()
            self.outstanding -= 1
            if self.outstanding < self.window:
                self.window_open.set()

    def handle_socketio(self, data: bytes) -> None:
        head = data[:2]
        if head == b"42":
            arr = loads(data[2:])
            if arr and arr[0] == "event":
                self.handle_json(arr[1])
            else:
                self.st.error("socketio_unknown_event", repr(arr)[:200])
        elif data == b"2":  # engine.io ping from the server
            self.st.heartbeats += 1
            self.transport.send(TEXT, b"3")
        elif head == b"43":
            i = 2
            while data[i : i + 1].isdigit():
                i += 1
            self.on_reply(int(data[2:i]), True, data[i:])
        elif head == b"40":
            if not self.ready.done():
                self.ready.set_result(True)
        elif data[:1] == b"0":  # engine.io open: join the default namespace
            self.transport.send(TEXT, b"40")
        elif head == b"44":
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(f"socket.io connect refused: {data!r}"))
        elif head == b"41" or data[:1] == b"1":
            self.st.info_other["socketio_disconnect"] = (
                self.st.info_other.get("socketio_disconnect", 0) + 1
            )
        else:
            self.st.error("socketio_unknown_packet", repr(data[:100]))

    # requests ---------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.transport.send(TEXT, data)

    async def request(self, key: Any, data: bytes, timeout: float) -> Any:
        fut = self.loop.create_future()
        self.pending[key] = fut
        self.send(data)
        return await asyncio.wait_for(fut, timeout)

    async def subscribe(self, topic: str, timeout: float) -> None:
        if self.proto == "socketio":
            await self.request(0, b"420" + dumps(["subscribe", {"topic": topic}]), timeout)
        else:
            frame = {"type": "subscribe", "topic": topic, "request_id": SUB_RID}
            await self.request(SUB_RID, dumps(frame), timeout)

    def close(self) -> None:
        self.closing = True
        t = self.transport
        if t is not None and not t.is_disconnected:
            with contextlib.suppress(Exception):
                t.send_close()
            t.disconnect()


class ServerProbe:
    """RSS and CPU time of the server process(es)."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak_rss = 0
        self.last_cpu: dict[int, float] = {}

    @classmethod
    def discover(cls, explicit: list[int], port: int | None) -> ServerProbe:
        """Use the given pids, else the listeners on port; add their children."""
        pids = set(explicit)
        if not pids and port:
            for c in psutil.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                    pids.add(c.pid)
        for pid in list(pids):
            try:
                proc = psutil.Process(pid)
                parent = proc.parent()
                # gunicorn: the port is reported on the worker; its master runs the same command
                if parent is not None and parent.cmdline() == proc.cmdline():
                    pids.add(parent.pid)
            except psutil.Error:
                pass
        for pid in list(pids):
            with contextlib.suppress(psutil.Error):
                pids.update(ch.pid for ch in psutil.Process(pid).children(recursive=True))
        pids.discard(os.getpid())
        return cls(sorted(pids))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def rss_by_pid(self) -> dict[str, float]:
        out = {}
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                out[str(p.pid)] = round(p.memory_info().rss / 2**20, 1)
        return out

    def rss(self) -> int:
        total = 0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)
        return total

    def cpu(self) -> float:
        """Total CPU seconds; a process that exited keeps its last reading."""
        for p in self.procs:
            try:
                t = p.cpu_times()
                self.last_cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return sum(self.last_cpu.values())


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores)."""
    t = psutil.cpu_times()
    return (
        t.user
        + t.nice
        + t.system
        + getattr(t, "irq", 0)
        + getattr(t, "softirq", 0)
        + getattr(t, "steal", 0)
    )


def client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i] / 1e6


def latency_summary(lat: array.array) -> dict[str, float]:
    vals = sorted(lat)
    return {
        "p50": round(percentile(vals, 0.50), 3),
        "p90": round(percentile(vals, 0.90), 3),
        "p99": round(percentile(vals, 0.99), 3),
        "max": round(vals[-1] / 1e6, 3) if vals else 0.0,
        "samples": len(vals),
    }


class Topic:
    """One topic of a fan-out run: its connections and how many messages went to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.subs: list[Conn] = []
        self.pubs: list[Conn] = []
        self.sent = 0


class Run:
    """One load-generator run: setup, load, and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.st = Stats()
        u = urllib.parse.urlsplit(args.url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme in ("https", "wss") else 80)
        self.ws_base = (
            "wss" if u.scheme in ("https", "wss") else "ws"
        ) + f"://{self.host}:{self.port}"
        self.topic = args.topic or f"bench-{os.getpid()}-{int(time.time() * 1000)}"
        n_topics = 1 if args.idle else args.topics
        names = [self.topic] if n_topics == 1 else [f"{self.topic}-{k}" for k in range(n_topics)]
        self.topics = [Topic(name) for name in names]
        self.token = ""
        self.subs: list[Conn] = []
        self.pubs: list[Conn] = []
        self.idle_conns: list[Conn] = []
        self.connect_errors = 0
        self.sent = 0
        self.report: dict[str, Any] = {}
        self.probe = ServerProbe.discover(args.server_pid or [], self.port)
        self.deadline = time.monotonic() + args.timeout
        self.pad = "x" * max(0, args.payload_bytes)
        self.phase = "start"  # reported, so a timed-out run says where it stuck

    # setup ------------------------------------------------------------------------------
    def http(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        # bounded by the run's deadline: a REST call that hangs must not outlive --timeout
        timeout = max(0.5, min(15.0, self.deadline - time.monotonic()))
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(
                method, path, body=dumps(body) if body is not None else None, headers=headers
            )
            resp = conn.getresponse()
            raw = resp.read()
            try:
                data = loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                data = {"raw": raw[:200].decode("utf-8", "replace")}
            return resp.status, data
        finally:
            conn.close()

    def rest_setup(self) -> None:
        """Register (or log in) and create the topic(s)."""
        creds = {"username": self.args.username, "password": self.args.password}
        status, data = self.http("POST", "/users/register", creds)
        if status == 409:
            status, data = self.http("POST", "/users/login", creds)
        if status not in (200, 201) or "token" not in data:
            raise RuntimeError(f"auth failed: HTTP {status} {data}")
        self.token = data["token"]
        for t in self.topics:
            status, data = self.http("POST", "/topics", {"name": t.name})
            if status not in (201, 409):
                raise RuntimeError(f"topic {t.name} create failed: HTTP {status} {data}")

    def ws_url(self) -> str:
        if self.args.protocol == "socketio":
            return f"{self.ws_base}/socket.io/?EIO=4&transport=websocket"
        if self.args.protocol == "gateway":
            return f"{self.ws_base}/ws?token={urllib.parse.quote(self.token)}"
        return f"{self.ws_base}/ws"

    async def connect(self) -> Conn:
        proto = self.args.protocol
        _, conn = await ws_connect(
            lambda: Conn(self.st, proto, not self.args.strict_parse),
            self.ws_url(),
            websocket_handshake_timeout=self.args.connect_timeout,
            read_buffer_init_size=8192,
        )
        await asyncio.wait_for(conn.ready, self.args.connect_timeout)
        return conn

    async def open_many(self, n: int, topic: str | None) -> list[Conn]:
        """Open n connections (subscribed to topic unless None), bounded concurrency."""
        sem = asyncio.Semaphore(self.args.connect_concurrency)
        out: list[Conn] = []

        async def one() -> None:
            async with sem:
                conn = None
                try:
                    conn = await self.connect()
                    if topic is not None:
                        await conn.subscribe(topic, self.args.connect_timeout)
                    out.append(conn)
                except Exception as exc:
                    self.connect_errors += 1
                    self.st.error("connect", f"{type(exc).__name__}: {exc}")
                    if conn is not None:
                        conn.close()

        await asyncio.gather(*(one() for _ in range(n)))
        return out

    # publishing -------------------------------------------------------------------------
    def publish_frame(self, topic: str, i: int) -> bytes:
        msg = {"id": f"m{i}", "payload": {"t": time_ns(), "pad": self.pad}}
        if self.args.protocol == "socketio":
            return b"42%d" % (i + 1) + dumps(["publish", {"topic": topic, "message": msg}])
        return dumps({"type": "publish", "topic": topic, "request_id": f"p{i}", "message": msg})

    def publish(self, t: Topic, pub: Conn, i: int) -> None:
        if not self.st.first_publish_ns:
            self.st.first_publish_ns = time_ns()
        pub.outstanding += 1
        pub.send(self.publish_frame(t.name, i))
        t.sent += 1
        self.sent += 1

    async def publish_max_rate(self) -> None:
        """Each publisher keeps at most --window publishes without an ack (all topics at once)."""
        m = self.args.messages

        async def run_one(t: Topic, k: int, pub: Conn) -> None:
            for i in range(k, m, len(t.pubs)):
                while pub.outstanding >= pub.window:
                    pub.window_open.clear()
                    await pub.window_open.wait()
                    if pub.transport.is_disconnected:
                        return
                self.publish(t, pub, i)

        await asyncio.gather(
            *(run_one(t, k, pub) for t in self.topics for k, pub in enumerate(t.pubs))
        )

    async def publish_paced(self) -> None:
        """Open loop: per topic, message i leaves at start + i/rate, round-robin over publishers."""
        m, rate = self.args.messages, self.args.rate
        start = time.monotonic()

        async def run_one(t: Topic) -> None:
            p = len(t.pubs)
            i = 0
            while i < m:
                due = min(m, int((time.monotonic() - start) * rate) + 1)
                while i < due:
                    self.publish(t, t.pubs[i % p], i)
                    i += 1
                if i < m:
                    await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))

        await asyncio.gather(*(run_one(t) for t in self.topics))

    def expected(self) -> int:
        return sum(len(t.subs) * t.sent for t in self.topics)

    async def wait_drained(self, expected: int) -> None:
        """Return once everything arrived, or nothing moved for --drain-idle seconds."""
        st = self.st
        seen = (-1, -1)
        while True:
            if st.events + st.dropped >= expected and st.acks >= self.sent:
                self.end_mark = self.cpu_mark()
                return
            now = time.monotonic()
            if (st.events, st.acks) != seen:
                seen = (st.events, st.acks)
                st.last_progress = now
                self.end_mark = self.cpu_mark()  # a quiet tail must not dilute the CPU figures
            elif now - st.last_progress > self.args.drain_idle:
                return
            await asyncio.sleep(0.05)

    def cpu_mark(self) -> tuple[float, float, float, float]:
        return (self.probe.cpu(), client_cpu(), time.monotonic(), machine_busy())

    async def sample_rss(self) -> None:
        while True:
            self.probe.rss()
            await asyncio.sleep(0.5)

    # modes ------------------------------------------------------------------------------
    async def fanout(self) -> None:
        a = self.args
        r = self.report
        t0 = time.monotonic()
        self.phase = "connect"
        for t in self.topics:
            t.subs = await self.open_many(a.subscribers, t.name)
            self.subs += t.subs
        for t in self.topics:
            t.pubs = await self.open_many(a.publishers, None)
            self.pubs += t.pubs
        r["connect_s"] = round(time.monotonic() - t0, 2)
        for t in self.topics:
            if not t.pubs:
                raise RuntimeError(f"no publisher could connect (topic {t.name})")
        for pub in self.pubs:
            pub.window = a.window if not a.rate else 1 << 62
        await asyncio.sleep(a.settle)
        self.mark = self.cpu_mark()
        self.phase = "publish"
        if a.rate:
            await self.publish_paced()
        else:
            await self.publish_max_rate()
        self.st.last_progress = time.monotonic()
        self.phase = "drain"
        await self.wait_drained(self.expected())

    async def idle(self) -> None:
        a = self.args
        r = self.report
        await asyncio.sleep(0.5)
        base = await self.settled_rss()
        t0 = time.monotonic()
        self.phase = "connect"
        self.idle_conns = await self.open_many(a.idle, self.topic)
        r["connect_s"] = round(time.monotonic() - t0, 2)
        after = await self.settled_rss()
        n = len(self.idle_conns)
        r["idle_connections"] = n
        r["server_rss_before_mb"] = round(base / 2**20, 1)
        r["server_rss_after_mb"] = round(after / 2**20, 1)
        r["server_rss_per_conn_kib"] = round((after - base) / n / 1024, 2) if n else None
        self.mark = self.cpu_mark()
        self.phase = "hold"
        hold_end = min(self.deadline - 2, time.monotonic() + a.idle_hold)
        pings_sent = 0
        # each connection pings every --idle-ping seconds, staggered over the interval
        if a.idle_ping > 0 and a.protocol != "socketio" and n:
            step = a.idle_ping / n
            frame = dumps({"type": "ping", "request_id": "k"})
            i = 0
            start = time.monotonic()
            while time.monotonic() < hold_end:
                conn = self.idle_conns[i % n]
                if not conn.transport.is_disconnected:
                    conn.send(frame)
                    pings_sent += 1
                i += 1
                await asyncio.sleep(max(0.0, start + i * step - time.monotonic()))
        else:
            await asyncio.sleep(max(0.0, hold_end - time.monotonic()))
        r["idle_hold_s"] = round(time.monotonic() - self.mark[2], 2)
        r["pings_sent"] = pings_sent
        r["still_open"] = sum(1 for c in self.idle_conns if not c.transport.is_disconnected)

    async def settled_rss(self) -> int:
        """RSS once it stops moving (<1% over 1 s), at most --settle-max seconds."""
        end = time.monotonic() + self.args.settle_max
        prev = self.probe.rss()
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            cur = self.probe.rss()
            if prev and abs(cur - prev) < 0.01 * prev:
                return cur
            prev = cur
        return self.probe.rss()

    async def body(self) -> None:
        if self.args.protocol == "gateway":
            self.phase = "rest-setup"
            await asyncio.to_thread(self.rest_setup)
        await (self.idle() if self.args.idle else self.fanout())

    async def main(self) -> dict:
        self.mark = None
        self.end_mark = None
        timed_out = False
        sampler = asyncio.create_task(self.sample_rss())
        try:
            await asyncio.wait_for(self.body(), max(0.1, self.deadline - time.monotonic()))
            self.phase = "done"
        except TimeoutError:
            timed_out = True
        except Exception as exc:
            self.st.error("fatal", f"{type(exc).__name__}: {exc}")
        sampler.cancel()
        self.finish_report(timed_out)
        for c in self.subs + self.pubs + self.idle_conns:
            c.close()
        await asyncio.sleep(0.3)
        return self.report

    def finish_report(self, timed_out: bool) -> None:
        a, st, r = self.args, self.st, self.report
        rss = self.probe.rss()
        if self.mark:
            cpu_s0, cpu_c0, w0, busy0 = self.mark
            cpu_s1, cpu_c1, w1, busy1 = self.end_mark or self.cpu_mark()
            wall = max(1e-9, w1 - w0)
            server = cpu_s1 - cpu_s0
            client = cpu_c1 - cpu_c0
            r["server_cpu_pct"] = round(100 * server / wall, 1)
            r["client_cpu_pct"] = round(100 * client / wall, 1)
            # anything else on the machine (other tests, builds) skews the figures: say how much
            r["other_cpu_pct"] = round(max(0.0, 100 * (busy1 - busy0 - server - client) / wall), 1)
            r["cpus"] = os.cpu_count()
            r["client_processes"] = 1  # every topic and connection: one process, one event loop
        if not a.idle:
            expected = self.expected()
            span = (st.last_delivery_ns - st.first_publish_ns) / 1e9 if st.last_delivery_ns else 0
            pub_span = (st.last_ack_ns - st.first_publish_ns) / 1e9 if st.last_ack_ns else 0
            per_sub = [c.events for c in self.subs] or [0]
            r.update(
                subscribed=len(self.subs),
                publishers_connected=len(self.pubs),
                published=self.sent,
                acked=st.acks,
                publish_errors=st.publish_errors,
                expected=expected,
                received=st.events,
                lost=expected - st.events,
                dropped_notified=st.dropped,
                out_of_order=st.out_of_order,
                per_sub_min=min(per_sub),
                per_sub_max=max(per_sub),
                duration_s=round(span, 3),
                deliveries_per_s=round(st.events / span) if span > 0 else 0,
                publish_rate=round(st.acks / pub_span) if pub_span > 0 else 0,
                latency_ms=latency_summary(st.latencies),
            )
            if len(self.topics) > 1:
                r["per_topic"] = [
                    {
                        "topic": t.name,
                        "subscribed": len(t.subs),
                        "publishers_connected": len(t.pubs),
                        "published": t.sent,
                        "received": sum(c.events for c in t.subs),
                        "lost": len(t.subs) * t.sent - sum(c.events for c in t.subs),
                    }
                    for t in self.topics
                ]
        r.update(
            heartbeats=st.heartbeats,
            pongs=st.pongs,
            connect_errors=self.connect_errors,
            unexpected_disconnects=st.unexpected_disconnects,
            close_codes=st.close_codes,
            bad_frames=st.bad_frames,
            bad_events=st.bad_events,
            info_other=st.info_other,
            errors=st.errors,
            error_samples=st.error_samples,
            server_pids=self.probe.pids,
            server_rss_by_pid_mb=self.probe.rss_by_pid(),
            server_rss_mb=round(rss / 2**20, 1),
            server_rss_peak_mb=round(self.probe.peak_rss / 2**20, 1),
            timed_out=timed_out,
            phase=self.phase,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--protocol", choices=["gateway", "socketio", "ceiling"], default="gateway")
    p.add_argument("--subscribers", "-s", type=int, default=100)
    p.add_argument("--publishers", "-p", type=int, default=1)
    p.add_argument("--messages", "-m", type=int, default=1000, help="messages published in total")
    p.add_argument("--rate", type=float, default=0, help="total msgs/s; 0 = max rate with --window")
    p.add_argument("--window", type=int, default=100, help="max unacked publishes per publisher")
    p.add_argument(
        "--payload-bytes", type=int, default=100, help="length of the pad string per message"
    )
    p.add_argument("--topic", default="", help="topic name (default: a fresh unique one)")
    p.add_argument(
        "--topics",
        type=int,
        default=1,
        help="fan-out over N topics named <topic>-<k>: -s, -p, -m and --rate are then per topic",
    )
    p.add_argument("--idle", type=int, default=0, help="idle mode: open N subscribed connections")
    p.add_argument(
        "--idle-hold", type=float, default=10, help="seconds to keep idle connections open"
    )
    p.add_argument(
        "--idle-ping", type=float, default=5, help="each idle conn sends a ping every N s (0=off)"
    )
    p.add_argument("--timeout", type=float, default=60, help="hard deadline for the whole run (s)")
    p.add_argument(
        "--drain-idle", type=float, default=3, help="stop waiting after N s without progress"
    )
    p.add_argument(
        "--settle", type=float, default=0.5, help="pause between connecting and publishing"
    )
    p.add_argument("--settle-max", type=float, default=5, help="max wait for server RSS to settle")
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--connect-timeout", type=float, default=15)
    p.add_argument(
        "--server-pid", type=int, action="append", help="server pid (repeatable); default: by port"
    )
    p.add_argument("--username", default="bench-user")
    p.add_argument("--password", default="bench-password")
    p.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    p.add_argument(
        "--strict-parse",
        action="store_true",
        help="orjson-parse every event (default: find-based fast path for compact events)",
    )
    args = p.parse_args(argv)
    if (
        args.subscribers < 0
        or args.publishers < 1
        or args.messages < 0
        or args.window < 1
        or args.topics < 1
    ):
        p.error("need subscribers >= 0, publishers >= 1, messages >= 0, window >= 1, topics >= 1")
    return args


def params_of(args: argparse.Namespace) -> dict:
    keys = (
        "protocol",
        "url",
        "topics",
        "subscribers",
        "publishers",
        "messages",
        "rate",
        "window",
        "payload_bytes",
        "idle",
        "idle_hold",
        "idle_ping",
        "timeout",
    )
    return {k: getattr(args, k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fd_limit = raise_fd_limit()
    need = (args.idle or (args.subscribers + args.publishers) * args.topics) + 64
    if fd_limit < need:
        print(f"warning: RLIMIT_NOFILE {fd_limit} < {need} sockets needed", file=sys.stderr)
    head = {"params": params_of(args), "mode": "idle" if args.idle else "fanout"}

    def watchdog() -> None:  # the event loop is wedged past the deadline: report and leave
        sys.stdout.write(
            dumps({**head, "timed_out": True, "errors": {"watchdog": 1}}).decode() + "\n"
        )
        sys.stdout.flush()
        os._exit(3)

    dog = threading.Timer(args.timeout + 30, watchdog)
    dog.daemon = True
    dog.start()
    run = Run(args)
    # The client's own cyclic GC walks every latency sample and connection object; its pauses
    # would show up as the server's latency tail (README "Decisions and limits" says the same of the server).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    report = runner(run.main())
    dog.cancel()
    head["topic"] = run.topic if len(run.topics) == 1 else [t.name for t in run.topics]
    sys.stdout.write(dumps({**head, **report}).decode() + "\n")
    sys.stdout.flush()
    return 1 if report.get("errors", {}).get("fatal") else 0


if __name__ == "__main__":
    sys.exit(main())
