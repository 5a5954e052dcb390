"""Property-based fuzzing of a live gateway's WebSocket protocol with Hypothesis (docs/protocol.md, docs/configuration.md "Limits").

Property 2: for a sequence of frames on one connection (mostly well-formed commands with
Hypothesis payloads, mixed with junk, fragments, pings and one protocol violation), every
message gets exactly one reply of a kind docs/protocol.md allows, events follow the rules of docs/delivery.md,
and a violation ends with a close frame of the right code. The server never drops the TCP
connection without a close frame and never writes a malformed frame. Each kind of violation
also gets a few scripts of its own.

Property 3: after every example GET /health answers 200 and the server logged no error and no
forged line; after the fuzzing a well-behaved client still subscribes, publishes and receives.

The server, the JSON oracle and the shared strategies live in fuzzing.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fuzzing import (
    DEPTH_OK,
    DEPTH_REFUSED,
    EXAMPLES,
    FORGED,
    MAX_BYTES,
    TOPIC_RE,
    Gateway,
    Printed,
    check_served,
    clip,
    dumps,
    fail,
    fuzz_settings,
    mutated,
    parse,
    payloads,
    same_json,
    weighted,
)
from fuzzing import target as target  # the fixture, taken by name: "as" marks it as used
from harness import TS_RE, RawClosed, RawWS, check_event
from hypothesis import given
from hypothesis import strategies as st

BAD = "BAD_REQUEST"
NOT_FOUND = "TOPIC_NOT_FOUND"
REPLY_TYPES = ("ack", "error", "pong")
FRAME_TYPES = (*REPLY_TYPES, "event", "info")
request_ids = st.text(max_size=20) | st.sampled_from(
    ["r1", f"x\n{FORGED} forged", f"\r\n{FORGED}", "", "\u2028", "a" * 300]
)


# ---------------------------------------------------------------------------------------------
# Property 2: WebSocket


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame, as RFC 6455 §5.2 lays it out (or, with the keywords, not quite)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    if not payload:
        return head + key
    stream = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked_payload = int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")
    return head + key + masked_payload.to_bytes(len(payload), "big")


@dataclass
class Expect:
    """What the reply to one client message may be (docs/protocol.md)."""

    label: str
    kinds: frozenset[str]  # "ack", "pong" or an error code
    request_id: str | None = None  # must be echoed
    command: str | None = None
    topic: str | None = None
    message: Any = None  # a publish's message, for the payload check
    exact: bool = True  # the payload must come back as sent
    replay: float = 0  # events a subscribe may replay


def expect_text(text: str, existing: tuple[str, ...]) -> Expect:
    """The oracle for a text message."""
    parsed = parse(text)
    if not parsed.ok:
        return Expect("not JSON", frozenset({BAD}))
    if parsed.depth >= DEPTH_REFUSED:
        return Expect("too deep", frozenset({BAD}))
    exp = expect_command(parsed.value, existing)
    exp.exact = not parsed.dups
    if parsed.lenient or parsed.depth > DEPTH_OK:
        exp.kinds |= {BAD}
        exp.request_id = None
    return exp


def expect_command(doc: Any, existing: tuple[str, ...]) -> Expect:
    if not isinstance(doc, dict):
        return Expect("not an object", frozenset({BAD}))
    request_id = doc.get("request_id")
    kind, topic = doc.get("type"), doc.get("topic")
    faults, wavers, missing = [], False, False
    if request_id is not None and not isinstance(request_id, str):
        faults.append("request_id")
        request_id = None
    client_id = doc.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        faults.append("client_id")
    if kind in ("subscribe", "unsubscribe", "publish"):
        if not isinstance(topic, str) or not topic:
            faults.append("topic")
        elif topic not in existing:
            missing = True
            wavers |= not TOPIC_RE.fullmatch(topic)
    elif kind != "ping":
        faults.append("type")
    replay: float = 0
    if kind == "subscribe":
        for name in ("last_n", "since_seq"):
            value = doc.get(name)
            if value is None or (type(value) is int and 0 <= value < 2**63):
                continue
            if type(value) is int or isinstance(value, float) and value.is_integer() and value >= 0:
                wavers = True  # 2**64 - 1 or 3.0: a non-negative int to some parsers
            else:
                faults.append(name)
        last_n, since_seq = doc.get("last_n"), doc.get("since_seq")
        wavers |= last_n is not None and since_seq is not None
        wavers |= doc.get("epoch") is not None and not isinstance(doc.get("epoch"), str)
        replay = math.inf if since_seq is not None else (last_n or 0)
    message = doc.get("message")
    if kind == "publish":
        if not isinstance(message, dict):
            faults.append("message")
        else:
            message_id = message.get("id")
            if not isinstance(message_id, str) or not message_id:
                faults.append("message.id")
            wavers |= "payload" not in message
    if faults:
        kinds = {BAD} | ({NOT_FOUND} if missing else set())
    elif missing:
        kinds = {NOT_FOUND} | ({BAD} if wavers else set())
    else:
        kinds = {"pong" if kind == "ping" else "ack"} | ({BAD} if wavers else set())
    name = kind if kind in ("subscribe", "unsubscribe", "publish", "ping") else "unknown type"
    label = f"{name} ({', '.join(faults)})" if faults else name
    return Expect(label, frozenset(kinds), request_id, kind, topic, message, replay=replay)


@dataclass
class Message(Printed):
    """A data message, maybe fragmented, maybe with pings between its fragments."""

    opcode: int
    fragments: list[bytes]
    pings: dict[int, bytes] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return b"".join(self.fragments)

    def wire(self) -> bytes:
        out, last = [], len(self.fragments) - 1
        for i, part in enumerate(self.fragments):
            out.append(frame(self.opcode if i == 0 else 0, part, fin=i == last))
            if i in self.pings and i < last:
                out.append(frame(0x9, self.pings[i]))
        return b"".join(out)

    def ping_payloads(self) -> list[bytes]:
        return [p for i, p in sorted(self.pings.items()) if i < len(self.fragments) - 1]

    def __repr__(self) -> str:
        cuts = [len(f) for f in self.fragments]
        shown = f"{len(cuts)} fragments" if len(cuts) > 8 else cuts
        data = clip(self.data, 600)
        return f"Message(op={self.opcode}, {data}, fragments={shown}, pings={self.pings})"


@dataclass
class Control:
    """A ping or an unsolicited pong."""

    opcode: int
    payload: bytes

    def wire(self) -> bytes:
        return frame(self.opcode, self.payload)


@dataclass
class Violation(Printed):
    """The last thing a script sends: a protocol error, an oversize message or a close."""

    label: str
    data: bytes
    codes: frozenset[int | None]

    def __repr__(self) -> str:
        return (
            f"Violation({self.label}, {clip(self.data, 300)}, codes={sorted(self.codes, key=str)})"
        )


@dataclass
class Script:
    """What one WebSocket example sends: good-enough frames, then maybe one violation."""

    actions: list[Message | Control]
    end: Violation | None
    cuts: list[float]  # where to split the bytes into separate writes


@st.composite
def command_text(draw, gw: Gateway) -> str:
    """A JSON command, mostly well-formed, sometimes with one mutation."""
    kind = draw(st.sampled_from(["publish"] * 3 + ["subscribe"] * 2 + ["unsubscribe", "ping"]))
    doc: dict[str, Any] = {"type": kind}
    if draw(st.integers(0, 3)):
        doc["request_id"] = draw(request_ids)
    if kind != "ping":
        doc["topic"] = draw(
            weighted(
                (8, st.sampled_from([gw.topics[0]] * 3 + [gw.topics[1]])),
                (1, st.sampled_from([gw.missing, "", "a b", "x" * 200, f"t\n{FORGED}"])),
                (1, st.text(max_size=10)),
            )
        )
    if kind == "subscribe":
        option = draw(st.sampled_from(["none", "last_n", "last_n", "since_seq"]))
        if option != "none":
            doc[option] = draw(st.integers(0, 150) | st.sampled_from([2**63 - 1, 2**64 - 1]))
        if draw(st.integers(0, 3)) == 0:
            doc["client_id"] = draw(st.text(max_size=10))
    token = None
    if kind == "publish":
        payload, token = draw(payloads())
        doc["message"] = {"id": draw(st.text(min_size=1, max_size=20)), "payload": payload}
    if draw(st.integers(0, 4)) == 0:
        doc = draw(mutated(doc))
    text = dumps(doc, draw(st.booleans()), token)
    if len(text.encode()) > MAX_BYTES:  # oversize is a violation of its own, sent last
        text = dumps({"type": "ping", "request_id": "shrunk"})
    return text


junk_text = st.text(max_size=60) | st.sampled_from(
    ["", " ", "{", "null", "[]", '"ping"', "{}", "\ufeff{}", '{"type":"ping"} x', "1e999"]
)


@st.composite
def fragments(draw, data: bytes) -> list[bytes]:
    """Data cut into up to five fragments, empty ones allowed."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def many_fragments(data: bytes, count: int) -> list[bytes]:
    """`data` cut into exactly `count` fragments (one byte each, padded with empty ones)."""
    ones = [data[i : i + 1] for i in range(min(len(data), count - 1))]
    rest = data[len(ones) :]
    return ones + [rest] + [b""] * (count - len(ones) - 1)


@st.composite
def ok_action(draw, gw: Gateway) -> Message | Control:
    """Anything a client may send without ending the connection."""
    kind = draw(st.sampled_from(["command"] * 6 + ["junk", "binary", "ping", "pong", "1024"]))
    if kind in ("ping", "pong"):
        return Control(0x9 if kind == "ping" else 0xA, draw(st.binary(max_size=125)))
    if (
        kind == "1024"
    ):  # docs/configuration.md "Limits": at most 1024 fragments, so exactly 1024 is fine
        data = dumps({"type": "ping", "request_id": "r1024"}).encode()
        return Message(0x1, many_fragments(data, 1024))
    if kind == "binary":
        data = draw(st.binary(max_size=100) | command_text(gw).map(str.encode))
    else:
        data = draw(command_text(gw) if kind == "command" else junk_text).encode()
    parts = draw(fragments(data))
    pings = draw(st.dictionaries(st.integers(0, 3), st.binary(max_size=20), max_size=2))
    return Message(0x2 if kind == "binary" else 0x1, parts, pings)


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    """A close frame's payload: a status code and a reason, or nothing."""
    return b"" if code is None else struct.pack("!H", code) + reason


VIOLATIONS = (
    "client close",
    "unknown opcode",
    "reserved bits",
    "control frame over 125 bytes",
    "fragmented control frame",
    "continuation without start",
    "new message inside a fragmented one",
    "unmasked frame",
    "invalid UTF-8",
    "oversize message",
    "oversize frame header",
    "length with the top bit set",
    "more than 1024 fragments",
)


@st.composite
def violation(draw, gw: Gateway, kinds: tuple[str, ...] = VIOLATIONS) -> Violation:
    """A frame sequence that must end the connection, with the close codes that fit it."""
    kind = draw(st.sampled_from(kinds))
    ping = dumps({"type": "ping", "request_id": "after-violation"}).encode()
    if kind == "client close":
        return draw(client_close())
    if kind == "unknown opcode":
        opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]))
        return Violation(kind, frame(opcode, draw(st.binary(max_size=20))), frozenset({1002}))
    if kind == "reserved bits":
        opcode = draw(st.sampled_from([0x1, 0x2, 0x9]))
        data = frame(opcode, ping, rsv=draw(st.integers(1, 7)))
        return Violation(kind, data, frozenset({1002}))
    if kind == "control frame over 125 bytes":
        opcode = draw(st.sampled_from([0x8, 0x9, 0xA]))
        size = draw(st.integers(126, 300))
        payload = close_payload(1000, b"r" * size) if opcode == 0x8 else b"p" * size
        return Violation(kind, frame(opcode, payload), frozenset({1002}))
    if kind == "fragmented control frame":
        opcode = draw(st.sampled_from([0x9, 0xA]))
        return Violation(kind, frame(opcode, b"x", fin=False), frozenset({1002}))
    if kind == "continuation without start":
        return Violation(kind, frame(0x0, ping, fin=draw(st.booleans())), frozenset({1002}))
    if kind == "new message inside a fragmented one":
        data = frame(0x1, b'{"type":', fin=False) + frame(draw(st.sampled_from([1, 2])), ping)
        return Violation(kind, data, frozenset({1002}))
    if kind == "unmasked frame":
        return Violation(kind, frame(0x1, ping, masked=False), frozenset({1002}))
    if kind == "invalid UTF-8":
        bad = draw(
            st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
        )
        data = b'{"type":"ping","x":"' + bad + b'"}'
        if draw(st.booleans()):
            data = data[: data.index(bad)] + bad[:1]  # cut short inside a sequence
        message = Message(0x1, draw(fragments(data)))
        return Violation(kind, message.wire(), frozenset({1007}))
    if kind in ("oversize message", "oversize frame header", "length with the top bit set"):
        size = draw(st.integers(MAX_BYTES + 1, MAX_BYTES + 3000) | st.just(MAX_BYTES + 1))
        text = dumps(
            {"type": "publish", "topic": gw.topics[0], "message": {"id": "m", "payload": ""}}
        )
        data = text.replace('""', '"' + "x" * (size - len(text)) + '"').encode()
        if kind == "oversize message":
            return Violation(kind, Message(0x1, draw(fragments(data))).wire(), frozenset({1009}))
        if kind == "oversize frame header":
            return Violation(kind, frame(0x1, data, length=2**40), frozenset({1009}))
        return Violation(kind, frame(0x1, data, length=2**63 + size), frozenset({1002, 1009}))
    count = draw(st.integers(1025, 1200))
    data = many_fragments(dumps({"type": "ping", "request_id": "r-many"}).encode(), count)
    return Violation(kind, Message(0x1, data).wire(), frozenset({1009}))


@st.composite
def client_close(draw) -> Violation:
    """A close frame from the client: echoed when valid (RFC 6455 §5.5.1, §7.4)."""
    form = draw(st.sampled_from(["valid", "valid", "registered", "bad code", "empty", "1 byte"]))
    reason = draw(st.text(max_size=40)).encode()[:120].decode("utf-8", "ignore").encode()
    if form == "valid":
        code = draw(st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011]))
        code = draw(st.just(code) | st.integers(3000, 4999))
        if draw(st.integers(0, 4)) == 0:
            return Violation(
                "client close, reason not UTF-8",
                frame(0x8, close_payload(code, b"\xff")),
                frozenset({1007, 1002}),
            )
        codes = {code, 1000}
    elif form == "registered":  # IANA-registered after RFC 6455: either answer is fair
        code = draw(st.sampled_from([1012, 1013, 1014]))
        codes = {code, 1000, 1002}
    elif form == "bad code":
        code = draw(st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]))
        codes = {1002}
    elif form == "empty":
        return Violation("client close without code", frame(0x8), frozenset({None, 1000}))
    else:
        return Violation("client close of 1 byte", frame(0x8, b"\x03"), frozenset({1002}))
    return Violation(
        f"client close ({form})", frame(0x8, close_payload(code, reason)), frozenset(codes)
    )


@st.composite
def ws_script(draw, gw: Gateway, ends: st.SearchStrategy | None = None) -> Script:
    actions = draw(st.lists(ok_action(gw), max_size=8))
    end = draw(weighted((1, st.none()), (2, violation(gw))) if ends is None else ends)
    cuts = draw(st.lists(st.floats(0, 1), max_size=5) | st.just([]))
    return Script(actions, end, cuts)


class FuzzWS(RawWS):
    """The harness's strict client, plus waiting for the server to end the TCP connection."""

    def wait_eof(self, timeout: float) -> bool:
        """Read until EOF or a reset; False if the connection is still open after timeout."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except TimeoutError:  # before OSError, its base class
            return False
        except (RawClosed, OSError):
            return True


class Conversation:
    """One fuzzed WebSocket: sends a script, reads and checks every frame that comes back."""

    def __init__(self, gw: Gateway, expects: list[Expect]) -> None:
        self.gw = gw
        self.expects = expects
        try:
            self.ws = FuzzWS(gw.server.port, gw.token, timeout=5)
        except (OSError, AssertionError) as exc:
            fail("handshake failed", repr(exc))
        self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.replies = 0
        self.frames: list[dict] = []
        self.pongs: list[bytes] = []
        self.close: tuple[int | None, str] | None = None
        self.closing = False  # a close is expected now
        self._parts: list[bytes] = []
        self._opcode: int | None = None
        self.subscribed: set[str] = set()
        self.replay_budget: dict[str, float] = {}
        self.ours: dict[tuple[str, int], Expect] = {}  # our publishes, by topic and seq
        self.early: dict[tuple[str, int], dict] = {}  # events seen before their publish ack
        self.awaited: set[tuple[str, int]] = set()
        self.last_event: dict[str, int] = {}
        self.dropped: set[str] = set()

    def send(self, data: bytes, cuts: list[float] = ()) -> None:
        """Write data, split into separate writes at `cuts`; a closed socket ends the writing."""
        points = sorted({int(c * len(data)) for c in cuts} | {0, len(data)})
        try:
            for a, b in itertools.pairwise(points):
                self.ws.sock.sendall(data[a:b])
                if b < len(data):
                    time.sleep(0.001)
        except OSError:
            pass  # the server closed: what it said before is still in our buffer

    def pump(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Read frames until done() or a close frame; fail on silence, EOF or a bad frame."""
        deadline = time.monotonic() + timeout
        while not done() and self.close is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(f"no answer: {what}", f"{self.waiting()} got {clip(self.frames[-5:], 1500)}")
            try:
                fin, opcode, payload = self.ws.read_frame(remaining)
            except TimeoutError:
                continue
            except (RawClosed, OSError) as exc:  # EOF, or a reset if our bytes were unread
                fail(f"TCP closed without a close frame: {what}", f"{exc!r} {self.frames[-5:]}")
            except AssertionError as exc:
                fail("malformed frame from the server", str(exc))
            self._take(fin, opcode, payload)
        if self.close is not None and not self.closing:
            fail(f"server closed during valid traffic: {what}", f"close {self.close}")

    def waiting(self) -> str:
        return f"awaited events {sorted(self.awaited)};" if self.awaited else ""

    def _take(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:
            # Not once our last frames are out: a pong inside a frame that claimed 2**40
            # bytes would be read as more of its payload.
            if not self.closing:
                self.send(frame(0xA, payload))
        elif opcode == 0xA:
            self.pongs.append(payload)
        elif opcode == 0x8:
            self.close = self._close_frame(payload)
        else:
            if (opcode == 0) == (self._opcode is None):
                fail("malformed frame from the server", f"opcode {opcode} out of sequence")
            self._opcode = self._opcode if opcode == 0 else opcode
            self._parts.append(payload)
            if fin:
                opcode, data = self._opcode, b"".join(self._parts)
                self._opcode, self._parts = None, []
                if opcode != 0x1:
                    fail("binary frame from the server", clip(data))
                self._json(data)

    @staticmethod
    def _close_frame(payload: bytes) -> tuple[int | None, str]:
        if not payload:
            return None, ""
        if len(payload) == 1:
            fail("malformed close frame from the server", repr(payload))
        code = struct.unpack("!H", payload[:2])[0]
        if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
            fail("close code not allowed on the wire", f"{code} {payload[2:]!r}")
        try:
            return code, payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            fail("close reason not UTF-8", repr(payload))

    def _json(self, data: bytes) -> None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except ValueError:
            fail("server frame is not JSON", clip(data))
        if not isinstance(doc, dict) or doc.get("type") not in FRAME_TYPES:
            fail("server frame is not a known object", clip(doc))
        if not isinstance(doc.get("ts"), str) or not TS_RE.match(doc["ts"]):
            fail("server frame without a good ts", clip(doc))
        self.frames.append(doc)
        if doc["type"] in REPLY_TYPES:
            self._reply(doc)
        elif doc["type"] == "event":
            self._event(doc)
        elif doc.get("msg") == "dropped" and isinstance(doc.get("topic"), str):
            self.dropped.add(doc["topic"])
            self.awaited = {k for k in self.awaited if k[0] != doc["topic"]}
        elif doc.get("msg") != "ping":
            fail("unexpected info frame", clip(doc))

    def _reply(self, doc: dict) -> None:
        if self.replies >= len(self.expects):
            fail("reply to nothing", f"{clip(doc)} after {len(self.expects)} messages")
        exp = self.expects[self.replies]
        self.replies += 1
        kind = doc["type"]
        if kind == "error":
            error = doc.get("error")
            if not (
                isinstance(error, dict)
                and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str)
                and error["message"]
            ):
                fail("error frame without code and message", clip(doc))
            kind = error["code"]
        if kind == "INTERNAL":
            fail("INTERNAL error for client input", f"{exp.label}: {clip(doc)}")
        if kind not in exp.kinds:
            fail(f"wrong reply to {exp.label}", f"expected {sorted(exp.kinds)}, got {clip(doc)}")
        if "request_id" in doc and not isinstance(doc["request_id"], str):
            fail("request_id echoed as a non-string", clip(doc))
        if exp.request_id is not None and doc.get("request_id") != exp.request_id:
            fail("request_id not echoed", f"{exp.request_id!r}: {clip(doc)}")
        if kind != "ack":
            return
        if doc.get("status") != "ok" or doc.get("topic") != exp.topic:
            fail("ack without status ok and its topic", f"{exp.label}: {clip(doc)}")
        if exp.command == "subscribe" and exp.topic not in self.subscribed:
            self.subscribed.add(exp.topic)
            self.last_event.pop(exp.topic, None)  # a new subscription replays afresh
            self.replay_budget[exp.topic] = self.replay_budget.get(exp.topic, 0) + exp.replay
        elif exp.command == "unsubscribe":
            self.subscribed.discard(exp.topic)
            self.awaited = {k for k in self.awaited if k[0] != exp.topic}
        elif exp.command == "publish":
            self._published(doc, exp)

    def _published(self, ack: dict, exp: Expect) -> None:
        seq = ack.get("seq")
        if type(seq) is not int or seq < 1:
            fail("publish ack without seq", clip(ack))
        previous = self.gw.last_seq.get(exp.topic)
        self.gw.last_seq[exp.topic] = seq
        if previous is not None and seq != previous + 1:
            fail("publish seq skipped or reused", f"after {previous} got {seq}")
        key = (exp.topic, seq)
        self.ours[key] = exp
        if key in self.early:
            self._same_message(self.early.pop(key), exp)
        elif exp.topic in self.subscribed:
            self.awaited.add(key)

    def _event(self, doc: dict) -> None:
        try:
            message = check_event(doc, doc.get("topic"))
        except (AssertionError, KeyError, TypeError) as exc:
            fail("malformed event", f"{exc!r}: {clip(doc)}")
        topic, seq = doc["topic"], message["seq"]
        if topic not in self.subscribed:
            fail("event on a topic not subscribed", clip(doc))
        if seq <= self.last_event.get(topic, 0):
            fail("event seq repeated or out of order", f"{seq} after {self.last_event[topic]}")
        self.last_event[topic] = seq
        self.awaited.discard((topic, seq))
        if (topic, seq) in self.ours:
            self._same_message(doc, self.ours[(topic, seq)])
        else:
            self.early[(topic, seq)] = doc

    @staticmethod
    def _same_message(event: dict, exp: Expect) -> None:
        got = event["message"]
        if got["id"] != exp.message["id"]:
            fail("event id changed", f"sent {exp.message['id']!r}, got {got['id']!r}")
        sent = exp.message.get("payload")
        if exp.exact and not same_json(got.get("payload"), sent):
            fail("event payload changed", f"sent {clip(sent)}, got {clip(got.get('payload'))}")

    def finish(self) -> None:
        """Wait for the events our publishes owe us, then check replays and pongs."""
        self.pump(lambda: not self.awaited, 5.0, "events our publishes are owed")
        replays: dict[str, int] = {}
        for topic, _ in self.early:
            replays[topic] = replays.get(topic, 0) + 1
        for topic, count in replays.items():
            if topic not in self.dropped and count > self.replay_budget.get(topic, 0):
                fail("replay longer than asked", f"{count} events on {topic}")

    def expect_close(self, codes: frozenset[int | None], label: str, we_closed: bool) -> None:
        """Read up to the server's close frame, check its code, finish the closing handshake."""
        self.pump(lambda: False, 4.0, f"close after {label}")
        code = self.close[0]
        if code not in codes:
            fail(f"wrong close code after {label}", f"{code} {self.close[1]!r}, not in {codes}")
        if not we_closed:
            self.send(frame(0x8, close_payload(code)))
        # The server may wait a while for our close (it cannot read one inside a frame that
        # claimed 2**40 bytes), but not for ever.
        if not self.ws.wait_eof(6.0):
            fail("TCP left open after the close handshake", label)
        if self.ws.buf:
            fail("bytes after the close frame", clip(self.ws.buf))


def run_script(gw: Gateway, script: Script) -> None:
    """Property 2 for one script."""
    existing = (*gw.topics, *gw.created)
    expects: list[Expect] = []
    pings: list[bytes] = []
    for action in script.actions:
        if isinstance(action, Control):
            pings += [action.payload] if action.opcode == 0x9 else []
            continue
        pings += action.ping_payloads()
        if action.opcode == 0x2:
            expects.append(Expect("binary message", frozenset({BAD})))
        else:
            expects.append(expect_text(action.data.decode("utf-8"), existing))
    barrier = f"barrier-{next(gw.serial)}"
    expects.append(Expect("barrier ping", frozenset({"pong"}), barrier))
    conv = Conversation(gw, expects)
    try:
        data = b"".join(a.wire() for a in script.actions)
        conv.send(
            data + frame(0x1, dumps({"type": "ping", "request_id": barrier}).encode()), script.cuts
        )
        conv.pump(lambda: conv.replies == len(expects), 5.0, "a reply to every message")
        if not is_subsequence(pings, conv.pongs):
            fail("pings not answered with their payload", f"sent {pings}, got {conv.pongs}")
        conv.finish()
        end = script.end or Violation(
            "client close", frame(0x8, close_payload(1000)), frozenset({1000})
        )
        conv.closing = True
        conv.send(end.data)
        # A close frame of ours, well-formed or not, is the last frame we may send.
        conv.expect_close(end.codes, end.label, we_closed=end.data[0] & 0x0F == 0x8)
    finally:
        conv.ws.close()


def is_subsequence(wanted: list[bytes], got: list[bytes]) -> bool:
    """Tell whether `wanted` appears in `got` in order (other items may come between)."""
    rest = iter(got)
    return all(any(w == g for g in rest) for w in wanted)


def test_websocket_frames_get_json_replies_or_a_close_code(target):
    """Property 2 over scripts of mixed frames, two thirds of them ending in a violation."""

    @fuzz_settings(EXAMPLES[target.broker]["ws"])
    @given(ws_script(target))
    def fuzz(script: Script) -> None:
        target.run(lambda: run_script(target, script))

    fuzz()


@pytest.mark.parametrize("kind", VIOLATIONS)
def test_each_protocol_violation_gets_its_close_code(target, kind):
    """The mix above may miss a rare kind of violation; here each one gets a few scripts."""

    @fuzz_settings(EXAMPLES[target.broker]["per violation"])
    @given(ws_script(target, violation(target, (kind,))))
    def fuzz(script: Script) -> None:
        target.run(lambda: run_script(target, script))

    fuzz()


# ---------------------------------------------------------------------------------------------
# Property 3: the server still serves


def test_well_behaved_client_is_served_after_fuzzing(target):
    """Property 3: after all the abuse, health, subscribe/publish/receive and register work."""
    check_served(target)
