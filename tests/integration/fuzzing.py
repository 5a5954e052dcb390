"""Shared parts of the live-gateway fuzz suites (test_live_fuzz_rest.py, test_live_fuzz_ws.py).

Property-based fuzzing of a live gateway with Hypothesis (docs/rest-api.md, docs/protocol.md, docs/configuration.md "Limits"). Each suite
runs one real gunicorn (gevent worker) per broker, the memory broker and a real Redis, from the
module-scoped `target` fixture here. After every example GET /health answers 200 and the server
logged no error and no forged line (`Gateway.check_alive`).

The oracle is written from the spec, not from the code. Where the spec leaves a choice (which
of two faults is reported, whether a lone surrogate escape or a 400-digit number is JSON the
gateway must take) either answer is accepted, but an accepted value must come back unchanged.
Each kind of failure raises its own exception class, so Hypothesis shrinks and reports every
distinct failure separately instead of the first one only.

GATEWAY_FUZZ_SCALE=N multiplies the example counts and randomizes the run, for a longer hunt
on a workstation; CI runs the default, derandomized, in about a minute.

This module holds no tests: failure reporting, the JSON oracle, the strategies both transports
draw from, the server under test and its fixture. A test module takes the fixture with
`from fuzzing import target as target` (the alias tells linters the import is used).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from harness import (
    PASSWORD,
    Server,
    check_event,
    create_topic,
    http_full,
    register,
    unique,
    ws_connect,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# tests/ holds redis_server.py; make it importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_server import RedisServer  # noqa: E402

MAX_BYTES = 8192  # MAX_MESSAGE_BYTES of the fuzzed servers: oversize input stays cheap to send
# MAX_JSON_DEPTH is 32; whether `{}` counts as one level or two is not the client's business,
# so the oracle only insists where both ways of counting agree.
DEPTH_OK = 31
DEPTH_REFUSED = 34
FORGED = "FORGED-LOG-LINE"  # client strings carry "\n" + this; no log line may start with it
SCALE = max(1, int(os.environ.get("GATEWAY_FUZZ_SCALE", "1") or 1))
EXAMPLES = {
    "memory": {"rest": 1000, "ws": 600, "per violation": 8},
    "redis": {"rest": 400, "ws": 400, "per violation": 3},
}
TOPIC_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SEVERE_LOG = re.compile(
    r"^(Traceback |\S+ \S+ (ERROR|CRITICAL) |\[[^]]*\] \[\d+\] \[(ERROR|CRITICAL)\])"
)


# ---------------------------------------------------------------------------------------------
# Failures: one exception class per kind, so that each is shrunk and reported on its own

_FAILURES: dict[str, type[AssertionError]] = {}


def fail(kind: str, detail: str) -> NoReturn:
    """Raise the AssertionError subclass that stands for this kind of failure."""
    if kind not in _FAILURES:
        name = "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]+", kind) if w)
        _FAILURES[kind] = type(name or "Failure", (AssertionError,), {})
    raise _FAILURES[kind](f"{kind}: {detail}")


class Printed:
    """Shown in Hypothesis' reports by its own short repr, not field by field."""

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


def clip(value: Any, size: int = 400) -> str:
    """Return value's text (repr unless a str), shortened for a failure message."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= size else f"{text[:size]}... ({len(text)} chars)"


# ---------------------------------------------------------------------------------------------
# The JSON oracle: what a spec-following gateway must make of a document


@dataclass
class Parsed:
    """A client document as Python's json module reads it."""

    ok: bool  # it is JSON at all
    value: Any = None
    lenient: bool = False  # JSON that a strict parser may refuse (NaN, lone surrogates, ...)
    dups: bool = False  # an object repeats a key: any reading of it is fair
    depth: int = 0


def parse(data: str | bytes) -> Parsed:
    """Read a document as the oracle does; bytes must be UTF-8 (RFC 8259 §8.1)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return Parsed(False)
    flags: set[str] = set()

    def pairs(items: list[tuple[str, Any]]) -> dict:
        if len({k for k, _ in items}) != len(items):
            flags.add("dups")
        return dict(items)

    def constant(name: str) -> str:
        flags.add("constant")
        return name

    try:
        value = json.loads(data, object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError):
        return Parsed(False)
    depth, unusual = _shape(value)
    return Parsed(True, value, bool(flags) or unusual, "dups" in flags, depth)


def _shape(value: Any) -> tuple[int, bool]:
    """Return (container depth, whether a value is outside what every parser keeps)."""
    deepest, unusual = 0, False
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in _children(node))
            if isinstance(node, dict):
                stack.extend((key, depth) for key in node)
        elif isinstance(node, str):
            unusual |= any("\ud800" <= c <= "\udfff" for c in node)
        elif isinstance(node, float):
            unusual |= not math.isfinite(node)
        elif isinstance(node, int) and not isinstance(node, bool):
            unusual |= not -(2**63) <= node < 2**64
    return deepest, unusual


def _children(node: dict | list):
    return node.values() if isinstance(node, dict) else node


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values (1 == 1.0, as JSON numbers are; True is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    for big, other in ((a, b), (b, a)):
        if isinstance(big, int) and not -(2**63) <= big < 2**64:
            # Beyond 64 bits an integer is read as the nearest double (docs/decisions.md),
            # as JavaScript reads every number: what comes back is float(big).
            return isinstance(other, float) and float(big) == other
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------------------
# Strategies shared by both transports


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Draw from one of the strategies, chosen in proportion to its weight."""
    return st.sampled_from([s for weight, s in options for _ in range(weight)]).flatmap(lambda s: s)


keys = st.sampled_from(["a", "id", "type", "payload", "topic", "", "ключ", "\u0000"]) | st.text(
    max_size=8
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
    max_leaves=12,
)
depths = st.integers(1, 300) | st.sampled_from([30, 31, 32, 33, 34, 253, 254, 255, 256, 300])


def nest(depth: int, shape: str, leaf: Any) -> Any:
    """Wrap leaf in `depth` containers: lists, objects, or both in turn."""
    for level in range(depth):
        leaf = [leaf] if shape == "list" or (shape == "mixed" and level % 2) else {"k": leaf}
    return leaf


deep_values = st.builds(nest, depths, st.sampled_from(["list", "dict", "mixed"]), scalars)
# JSON text a strict parser may refuse or read differently; spliced into otherwise good input.
WEIRD_TOKENS = [
    r"-0",
    r"-0.0",
    r"0.1e1",
    r"1E+2",
    r"1e400",
    r"-1e400",
    r"1.5e-400",
    r"5e-324",
    r"NaN",
    r"Infinity",
    r"-Infinity",
    r"18446744073709551615",
    r"18446744073709551616",
    r"-9223372036854775808",
    r"-9223372036854775809",
    r'"\ud800"',
    r'"\udfff"',
    r'"a\ud83dz"',
    r'"\udc00\ud800"',
    r'"\ud83d\ude00"',
    r'"\u0000"',
    r'{"k":1,"k":[2],"k":{"k":3}}',
    r'{"type":"ping","type":"publish"}',
]
weird_tokens = (
    st.sampled_from(WEIRD_TOKENS)
    | st.integers(20, 400).map(lambda n: "9" * n)
    | st.builds(lambda n: "[" * n + "]" * n, depths)
    | st.builds(lambda n: '{"a":' * n + "0" + "}" * n, depths)
)
SLOT = "\u0000SLOT\u0000"


def dumps(obj: Any, ascii_only: bool = True, token: str | None = None) -> str:
    """Encode obj; the SLOT string, if any, becomes the raw JSON text `token`."""
    text = json.dumps(obj, ensure_ascii=ascii_only)
    return text.replace(json.dumps(SLOT), token, 1) if token is not None else text


@st.composite
def mutated(draw, obj: dict) -> Any:
    """A copy of a well-formed object with one field dropped, retyped or added, or not an object."""
    obj = json.loads(json.dumps(obj))
    how = draw(st.sampled_from(["drop", "retype", "add", "inner", "outer"]))
    junk = draw(json_values)
    if how == "outer":
        return draw(st.sampled_from([[obj], "text", 42, None, []]))
    node = obj
    if how == "inner":
        inner = [v for v in obj.values() if isinstance(v, dict) and v]
        if inner:
            node = draw(st.sampled_from(inner))
    if how == "add" or not node:
        node[draw(keys)] = junk
    elif how == "drop":
        del node[draw(st.sampled_from(sorted(node)))]
    else:
        node[draw(st.sampled_from(sorted(node)))] = junk
    return obj


@st.composite
def payloads(draw) -> tuple[Any, str | None]:
    """A payload and, for weird input, the raw JSON text standing in for it."""
    mode = draw(st.sampled_from(["value"] * 5 + ["deep"] * 2 + ["weird"] * 2 + ["big"]))
    if mode == "value":
        return draw(json_values), None
    if mode == "deep":
        return draw(deep_values), None
    if mode == "weird":
        return SLOT, draw(weird_tokens)
    return draw(st.sampled_from(["x", "é", "€"])) * draw(st.integers(500, 2500)), None


# ---------------------------------------------------------------------------------------------
# The server under test


@dataclass
class Gateway:
    """The fuzzed server and the state its examples share."""

    server: Server
    broker: str
    token: str
    username: str
    topics: tuple[str, str]  # exist for the WebSocket examples
    rest_topic: str
    missing: str  # a valid name that no example creates
    login_401: Any  # the body of a failed login
    log_offset: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    idempotent: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> seq, when
    accounts: dict[str, str | None] = field(default_factory=dict)  # password (None: unknown)
    created: set[str] = field(default_factory=set)  # topics REST examples created
    serial: Iterator[int] = field(default_factory=itertools.count)

    def __repr__(self) -> str:  # pytest shows it in every failure; the token need not be there
        return f"Gateway({self.broker}, port {self.server.port})"

    def take_log(self) -> str:
        """Return what the server logged since the last call."""
        with open(self.server.log_path, "rb") as fh:
            fh.seek(self.log_offset)
            data = fh.read()
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")

    def check_alive(self) -> None:
        """Property 3, cheaply: the process runs, /health is 200, the log shows no fault."""
        if self.server.proc.poll() is not None:
            fail("server exited", self.server.log_tail())
        resp = http_full("GET", self.server.url + "/health", timeout=5)
        if resp.status != 200:
            fail("health not 200", f"{resp.status} {resp.body[:200]!r}")
        lines = self.take_log().splitlines()
        if any(line.startswith(FORGED) for line in lines):
            fail("forged log line", "\n".join(lines[-30:]))
        if any(SEVERE_LOG.match(line) for line in lines):
            fail("server logged an error", "\n".join(lines[-40:]))

    def run(self, example: Callable[[], None]) -> None:
        """Run one example, then the liveness checks; a failure carries the server's log."""
        try:
            example()
            self.check_alive()
        except BaseException as exc:
            exc.add_note(f"server log during the example:\n{self.take_log()[-6000:]}")
            # Replies it left unread may have used seqs: count afresh from the next ack.
            self.last_seq.clear()
            raise


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a live server: no deadline, reproducible unless scaled up."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


@pytest.fixture(scope="module", params=["memory", "redis"])
def target(request, tmp_path_factory) -> Iterator[Gateway]:
    """One server per broker for the whole module, with a user and topics the examples share."""
    workdir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    env: dict[str, Any] = {"MAX_MESSAGE_BYTES": MAX_BYTES, "HEARTBEAT_INTERVAL": 2}
    with contextlib.ExitStack() as stack:
        if request.param == "redis":
            redis = RedisServer(workdir).start()
            stack.callback(redis.stop)
            env |= {"BROKER_URL": redis.url, "WEB_CONCURRENCY": 2}
        server = Server(workdir, env=env)
        stack.callback(server.close)
        server.start(timeout=30)
        username = unique("fuzz")
        token = register(server, username)
        topics = (create_topic(server, token), create_topic(server, token))
        rest_topic = create_topic(server, token)
        refused = http_full(
            "POST",
            server.url + "/users/login",
            {"username": unique("nobody"), "password": PASSWORD},
        )
        assert refused.status == 401, refused
        gw = Gateway(
            server,
            request.param,
            token,
            username,
            topics,
            rest_topic,
            unique("missing"),
            refused.json,
        )
        gw.last_seq = {name: 0 for name in (*topics, rest_topic)}
        gw.accounts[username] = PASSWORD
        gw.take_log()
        yield gw


def check_served(target: Gateway) -> None:
    """Property 3: after all the abuse, health, subscribe/publish/receive and register work."""
    target.check_alive()
    topic = target.topics[0]
    with (
        ws_connect(target.server, target.token) as sub,
        ws_connect(target.server, target.token) as pub,
    ):
        sub.subscribe(topic)
        ack = pub.publish(topic, {"after": "fuzzing"})
        msg = check_event(sub.recv(), topic, seq=ack["seq"])
        assert msg["payload"] == {"after": "fuzzing"}, msg
    token = register(target.server)
    resp = http_full("GET", target.server.url + "/topics", token=token)
    assert resp.status == 200 and isinstance(resp.json.get("topics"), list), resp
