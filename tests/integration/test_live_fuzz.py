"""Property-based fuzzing of a live gateway with Hypothesis (README "REST API", §4, §11).

One real gunicorn (gevent worker) per broker, the memory broker and a real Redis:

1. REST: whatever the body, headers, path and query, no answer is 5xx and every 4xx is a JSON
   object with a string "error"; a request that is valid by construction gets its documented
   status, an accepted payload comes back unchanged, and no refused publish spends a `seq`.
2. WebSocket: for a sequence of frames on one connection (mostly well-formed commands with
   Hypothesis payloads, mixed with junk, fragments, pings and one protocol violation), every
   message gets exactly one reply of a kind §4.3 allows, events follow the delivery rules of
   §5, and a violation ends with a close frame of the right code. The server never drops the
   TCP connection without a close frame and never writes a malformed frame.
3. After every example GET /health answers 200 and the server logged no error and no forged
   line; after the fuzzing a well-behaved client still subscribes, publishes and receives.

The oracle is written from the spec, not from the code. Where the spec leaves a choice (which
of two faults is reported, whether a lone surrogate escape or a 400-digit number is JSON the
gateway must take) either answer is accepted, but an accepted value must come back unchanged.
Each kind of failure raises its own exception class, so Hypothesis shrinks and reports every
distinct failure separately instead of the first one only.

GATEWAY_FUZZ_SCALE=N multiplies the example counts and randomizes the run, for a longer hunt
on a workstation; CI runs the default, derandomized, in about a minute.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import socket
import struct
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, NoReturn

import pytest
from harness import (
    PASSWORD,
    TS_RE,
    RawClosed,
    RawWS,
    Response,
    Server,
    check_event,
    create_topic,
    http_full,
    register,
    unique,
    ws_connect,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# tests/ holds redis_server.py; make it importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_server import RedisServer  # noqa: E402

MAX_BYTES = 8192  # MAX_MESSAGE_BYTES of the fuzzed servers: oversize input stays cheap to send
# MAX_JSON_DEPTH is 32; whether `{}` counts as one level or two is not the client's business,
# so the oracle only insists where both ways of counting agree.
DEPTH_OK = 31
DEPTH_REFUSED = 34
# Idempotency keys are kept a while and only so many per topic (README "Limits" leaves both open; the
# gateway keeps 1000 for 5 minutes): the oracle trusts less than that.
KEY_MEMORY = 240.0
KEYS_REMEMBERED = 500
FORGED = "FORGED-LOG-LINE"  # client strings carry "\n" + this; no log line may start with it
SCALE = max(1, int(os.environ.get("GATEWAY_FUZZ_SCALE", "1") or 1))
EXAMPLES = {
    "memory": {"rest": 1000, "ws": 600, "per violation": 8},
    "redis": {"rest": 400, "ws": 400, "per violation": 3},
}

BAD = "BAD_REQUEST"
NOT_FOUND = "TOPIC_NOT_FOUND"
REPLY_TYPES = ("ack", "error", "pong")
FRAME_TYPES = (*REPLY_TYPES, "event", "info")
POLICIES = ("anyone", "members", "owner")
USERNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
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
            # Beyond 64 bits an integer is read as the nearest double (README, Decisions),
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


header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
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


request_ids = st.text(max_size=20) | st.sampled_from(
    ["r1", f"x\n{FORGED} forged", f"\r\n{FORGED}", "", "\u2028", "a" * 300]
)


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


# ---------------------------------------------------------------------------------------------
# Property 1: REST


@dataclass
class Req(Printed):
    """One HTTP request of an example, with what the spec says it must get."""

    endpoint: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: frozenset[int] | None = None  # statuses allowed, when the request is valid enough
    stream: bool = False  # server-sent events: read the head only
    published: Parsed | None = None  # a publish body, checked through history once accepted
    key: str | None = None  # its Idempotency-Key

    def __repr__(self) -> str:
        body = None if self.body is None else clip(self.body, 600)
        headers = {k: clip(v, 24) for k, v in self.headers.items()}
        return f"Req({self.method} {self.path} headers={headers} body={body})"


content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-16",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "",
            "*/*",
        ]
    )
    | header_text
)
valid_names = st.from_regex(TOPIC_RE, fullmatch=True)
names = (
    valid_names
    | st.text(max_size=20)
    | st.sampled_from(["", ".", "..", "a/b", "a b", "x" * 129, f"t\n{FORGED}", "%2F", "é"])
)
emails = st.sampled_from([None, "a@b.c", "no-at", "a@@b", "@b", "a@", "x@y@z", " @ "]) | st.text(
    max_size=12
)


def valid_email(email: Any) -> bool | None:
    """True / False per §2.1, None where "text on both sides" is a matter of taste."""
    if email is None:
        return True
    if not isinstance(email, str):
        return False
    local, at, domain = email.partition("@")
    if not at or "@" in domain or not local or not domain:
        return False
    return True if local.strip() and domain.strip() else None


@st.composite
def body(draw, obj: dict) -> bytes:
    """The body of a request: mostly `obj` as JSON, else a mutation of it or junk."""
    mode = draw(
        st.sampled_from(["json"] * 6 + ["mutated"] * 3 + ["weird"] * 2 + ["deep", "junk", "huge"])
    )
    ascii_only = draw(st.booleans())
    if mode in ("weird", "deep") and obj:
        obj = dict(obj)
        slot = draw(st.sampled_from(sorted(obj)))
        if mode == "deep":
            obj[slot] = draw(deep_values)
        else:
            obj[slot] = SLOT
            return dumps(obj, ascii_only, draw(weird_tokens)).encode()
    if mode == "mutated":
        return dumps(draw(mutated(obj)), ascii_only).encode()
    if mode == "junk":
        return draw(
            st.binary(max_size=200)
            | st.text(max_size=100).map(str.encode)
            | st.just(b"")
            | st.just(json.dumps(obj).encode("utf-16"))
        )
    if mode == "huge":
        obj = {**obj, "pad": "y" * draw(st.integers(MAX_BYTES, MAX_BYTES + 3000))}
    return dumps(obj, ascii_only).encode()


def body_statuses(data: bytes) -> tuple[Parsed, set[int] | None]:
    """Statuses a JSON-object body must get whatever the route, or None: let the route decide."""
    parsed = parse(data)
    if len(data) > MAX_BYTES:
        return parsed, {400, 413}
    if not parsed.ok or not isinstance(parsed.value, dict):
        return parsed, {400}
    if parsed.depth >= DEPTH_REFUSED:
        return parsed, {400, 413}
    return parsed, None


def route_statuses(endpoint: str, gw: Gateway, data: bytes, **route: Any) -> set[int]:
    """The statuses §2-§3 allow for a body on a route; 400 joins them where the spec wavers."""
    parsed, fixed = body_statuses(data)
    if fixed is not None:
        return fixed
    doc, wavers = parsed.value, parsed.lenient or parsed.depth > DEPTH_OK
    if endpoint == "register":
        user, password, email = doc.get("username"), doc.get("password"), doc.get("email")
        if not isinstance(user, str) or not isinstance(password, str):
            return {400}
        ok = valid_email(email)
        if not (USERNAME_RE.fullmatch(user) and 8 <= len(password.encode()) <= 72) or ok is False:
            return {400}
        allowed = {201, 409} | ({400} if ok is None else set())
    elif endpoint == "login":
        user, password = doc.get("username"), doc.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            return {400, 401}
        if user not in gw.accounts:  # an earlier example may have registered it
            allowed = {401}
        else:
            known = gw.accounts[user]
            allowed = {200} if known == password else {200, 401} if known is None else {401}
        if not USERNAME_RE.fullmatch(user) or not 8 <= len(password.encode()) <= 72:
            allowed |= {400}  # malformed for register: 400 is fair, as long as 401s match
    elif endpoint == "create":
        name = doc.get("name")
        if not isinstance(name, str) or not TOPIC_RE.fullmatch(name):
            return {400}
        # Access policies ("publish", "subscribe") are not read yet: like any unknown
        # field they are ignored, whatever their value.
        allowed = {201, 409}
    else:  # publish
        message_id, key = doc.get("id"), route["key"]
        missing = {404} if route["name"] == gw.missing else set()  # either fault may come first
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            return {400} | missing
        if "payload" not in doc:
            return {400} | missing
        allowed = missing or {201}
        if message_id is None and "id" in doc:
            allowed |= {400}  # null for "no id": fair either way
        if key is not None and not re.fullmatch(r"[\x21-\x7e]{1,255}", key):
            allowed |= {400}
        if key in gw.idempotent:
            allowed |= {200, 409, 422}
    return allowed | ({400} if wavers else set())


@st.composite
def authorization(draw, gw: Gateway) -> tuple[dict[str, str], bool]:
    """An Authorization header (or none) and whether it is the valid one."""
    how = draw(st.sampled_from(["valid"] * 12 + ["none", "garbage", "tampered"]))
    if how == "valid":
        return {"Authorization": f"Bearer {gw.token}"}, True
    if how == "none":
        return {}, False
    if how == "garbage":
        return {"Authorization": draw(header_text | st.just("Bearer"))}, False
    head, _, signature = gw.token.rpartition(".")
    forged = "A" * len(signature) if signature != "A" * len(signature) else "B" * len(signature)
    return {"Authorization": f"Bearer {head}.{forged}"}, False


@st.composite
def extra_headers(draw) -> dict[str, str]:
    """A few headers a client may send, each with an ordinary or an odd value."""
    headers = {}
    for name, values in (
        ("Content-Type", content_types),
        ("X-Request-ID", header_text),
        ("Origin", header_text),
        ("Accept", header_text),
        ("Content-Encoding", st.sampled_from(["gzip", "br", "identity"]) | header_text),
    ):
        if draw(st.integers(0, 3)) == 0:
            headers[name] = draw(values)
    return headers


def quoted(name: str) -> str:
    """Quote a name as one path segment ("/" included)."""
    return urllib.parse.quote(name, safe="")


def needs_token(allowed: set[int] | None, valid: bool) -> frozenset[int] | None:
    """Without a valid token only 401 or a client error of the body's own is fair."""
    if allowed is None:
        return None
    return frozenset(allowed if valid else {401} | {s for s in allowed if s >= 400})


@st.composite
def account_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """POST /users/register or /users/login (no token: these routes need none)."""
    user = weighted((3, st.from_regex(USERNAME_RE, fullmatch=True)), (1, st.text(max_size=70)))
    doc = {"username": draw(user)}
    doc["password"] = draw(weighted((3, st.just(PASSWORD)), (1, st.text(max_size=80))))
    if endpoint == "login" and draw(st.booleans()):
        doc["username"] = gw.username
    if endpoint == "register" and draw(st.booleans()):
        doc["email"] = draw(emails)
    if draw(st.integers(0, 9)) == 0:
        doc["username"] = f"u\n{FORGED}"
    data = draw(body(doc))
    expect = frozenset(route_statuses(endpoint, gw, data))
    return [Req(endpoint, "POST", f"/users/{endpoint}", data, headers, expect)]


@st.composite
def create_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """POST /topics, with the §12 policies now and then."""
    # Mostly a fresh name, so that a failure reproduces: replayed, it would find its topic.
    fresh = valid_names.map(lambda name: f"{name[:100]}-{next(gw.serial)}")
    doc = {"name": draw(weighted((3, fresh), (1, st.just(gw.rest_topic)), (1, names)))}
    for policy, values in (("publish", ["anyone", "members", "owner"]), ("subscribe", [])):
        if draw(st.integers(0, 2)) == 0:
            doc[policy] = draw(st.sampled_from([*values, "anyone", "members", "nobody", None]))
    data = draw(body(doc))
    expect = needs_token(route_statuses("create", gw, data), valid)
    return [Req("create", "POST", "/topics", data, headers | auth, expect)]


@st.composite
def publish_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """POST /topics/<name>/messages, maybe with an Idempotency-Key."""
    name = draw(weighted((6, st.just(gw.rest_topic)), (1, st.just(gw.missing)), (1, names)))
    payload, token = draw(payloads())
    doc = {"payload": payload}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=12) | st.none())
    key = draw(st.none() | st.sampled_from(["k1", "k2", "k3"]) | header_text)
    if key is not None:
        headers["Idempotency-Key"] = key
    data = dumps(doc, draw(st.booleans()), token).encode()
    if draw(st.integers(0, 4)) == 0:
        data = draw(body(doc))
    expect = None
    if name in (gw.rest_topic, gw.missing):
        expect = needs_token(route_statuses("publish", gw, data, name=name, key=key), valid)
    checked = parse(data) if name == gw.rest_topic and valid else None
    path = f"/topics/{quoted(name)}/messages"
    return [Req("publish", "POST", path, data, headers | auth, expect, False, checked, key)]


@st.composite
def history_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """GET /topics/<name>/messages?since_seq=&limit=&epoch=."""
    name = draw(weighted((4, st.just(gw.rest_topic)), (1, st.just(gw.missing)), (1, names)))
    query = {}
    for param, good in (("since_seq", st.integers(0, 300)), ("limit", st.integers(1, 1000))):
        choice = draw(st.sampled_from(["absent", "good", "junk"]))
        if choice != "absent":
            query[param] = str(draw(good)) if choice == "good" else draw(st.text(max_size=12))
    if draw(st.integers(0, 4)) == 0:
        query["epoch"] = draw(st.text(max_size=12))
    expect = None
    if name in (gw.rest_topic, gw.missing) and all(
        re.fullmatch(r"[0-9]{1,4}", v) and (k != "limit" or 1 <= int(v) <= 1000)
        for k, v in query.items()
    ):
        expect = needs_token({200} if name == gw.rest_topic else {404}, valid)
    path = f"/topics/{quoted(name)}/messages?{urllib.parse.urlencode(query)}"
    return [Req("history", "GET", path, None, headers | auth, expect)]


@st.composite
def delete_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """DELETE /topics/<name>: of a topic created just before (then again), or of any name."""
    if draw(st.booleans()):
        name = draw(names)
        return [Req("delete", "DELETE", f"/topics/{quoted(name)}", None, headers | auth)]
    name = f"{draw(valid_names)[:100]}-{next(gw.serial)}"
    path = f"/topics/{quoted(name)}"
    owner = {"Authorization": f"Bearer {gw.token}"}
    return [
        Req("create", "POST", "/topics", dumps({"name": name}).encode(), owner, frozenset({201})),
        Req("delete", "DELETE", path, None, headers | auth, needs_token({200}, valid)),
        Req("delete", "DELETE", path, None, owner, frozenset({404} if valid else {200})),
    ]


@st.composite
def events_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """GET /topics/<name>/events (server-sent events) with a Last-Event-ID now and then."""
    name = draw(weighted((4, st.just(gw.rest_topic)), (1, st.just(gw.missing)), (1, names)))
    last = draw(st.none() | st.integers(0, 300).map(str) | header_text)
    if last is not None:
        headers["Last-Event-ID"] = last
    expect = None
    if name in (gw.rest_topic, gw.missing) and (
        last is None or re.fullmatch(r"[0-9]{1,4}", last.strip())
    ):
        expect = needs_token({200} if name == gw.rest_topic else {404}, valid)
    path = f"/topics/{quoted(name)}/events"
    return [Req("events", "GET", path, None, headers | auth, expect, stream=True)]


OTHER_ROUTES = [
    ("GET", "/users/profile"),
    ("GET", "/topics"),
    ("GET", "/topics/{}/members"),
    ("PUT", "/topics/{}/members/{}"),
    ("DELETE", "/topics/{}/members/{}"),
    ("POST", "/topics/{}"),
    ("PATCH", "/topics"),
    ("GET", "/{}"),
]


@st.composite
def other_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """Any other route, method or made-up path: only the general property applies."""
    method, path = draw(st.sampled_from(OTHER_ROUTES))
    path = path.format(*(quoted(draw(names)) for _ in range(path.count("{}"))))
    data = draw(st.none() | body({"x": 1}))
    return [Req("other", method, path, data, headers | auth)]


@st.composite
def upgrade_case(draw, gw: Gateway, endpoint: str, headers: dict, auth: dict, valid: bool):
    """GET /ws, each handshake header good, odd, junk or missing (README "Limits")."""
    return [draw(upgrade(headers | auth, valid))]


CASES = {
    "register": account_case,
    "login": account_case,
    "create": create_case,
    "publish": publish_case,
    "history": history_case,
    "delete": delete_case,
    "events": events_case,
    "upgrade": upgrade_case,
    "other": other_case,
}


@st.composite
def rest_case(draw, gw: Gateway) -> list[Req]:
    """One to three requests, mostly well-formed for their route, some of them mutated."""
    endpoint = draw(st.sampled_from([*CASES, "publish"]))
    auth, valid = draw(authorization(gw))
    return draw(CASES[endpoint](gw, endpoint, draw(extra_headers()), auth, valid))


GOOD_HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",  # RFC 6455's sample key
    "Sec-WebSocket-Version": "13",
}
OTHER_HANDSHAKE = {
    "Upgrade": ["WebSocket", "h2c", ""],
    "Connection": ["keep-alive, Upgrade", "close"],
    "Sec-WebSocket-Key": ["", "c2hvcnQ=", "not base64!"],
    "Sec-WebSocket-Version": ["8", "", "13, 8"],
}


@st.composite
def upgrade(draw, headers: dict[str, str], valid: bool) -> Req:
    """A WebSocket upgrade request and the statuses its handshake headers allow."""
    for name, good in GOOD_HANDSHAKE.items():
        how = draw(st.sampled_from(["good"] * 6 + ["other", "junk", "absent"]))
        if how == "good":
            headers[name] = good
        elif how == "other":
            headers[name] = draw(st.sampled_from(OTHER_HANDSHAKE[name]))
        elif how == "junk":
            headers[name] = draw(header_text)
    upgrading = headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in (
        headers.get("Connection", "").lower()
    )
    expect = None
    if upgrading and all(headers.get(k) == GOOD_HANDSHAKE[k] for k in list(GOOD_HANDSHAKE)[2:]):
        expect = needs_token({101}, valid)
    elif upgrading:
        expect = needs_token({400, 426}, valid)  # RFC 6455 answers a wrong version with 426
    return Req("upgrade", "GET", "/ws", None, headers, expect)


def send(gw: Gateway, req: Req) -> Response:
    """Send one request; a stream is closed as soon as its head has arrived."""
    if not req.stream:
        return http_full(
            req.method, gw.server.url + req.path, raw=req.body, headers=req.headers, timeout=10
        )
    conn = HTTPConnection("127.0.0.1", gw.server.port, timeout=10)
    try:
        conn.request(req.method, req.path, body=req.body, headers=req.headers)
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        data = b"" if resp.status == 200 else resp.read()
        return Response(resp.status, headers, data)
    finally:
        conn.close()


def check_response(req: Req, resp: Response) -> None:
    """Property 1 for one answer: no 5xx, JSON errors, the documented status."""
    said = f"{req!r} -> {resp.status} {resp.headers.get('content-type')} {clip(resp.body)}"
    if resp.status >= 500:
        fail(f"5xx from {req.endpoint}", said)
    if 400 <= resp.status < 500:
        doc = resp.json
        if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
            fail(f"error body not JSON from {req.endpoint}", said)
        if not resp.headers.get("content-type", "").startswith("application/json"):
            fail(f"error content-type from {req.endpoint}", said)
    if req.expect is not None and resp.status not in req.expect:
        fail(f"wrong status from {req.endpoint}", f"expected {sorted(req.expect)}: {said}")
    if 200 <= resp.status < 300:
        if req.stream:
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                fail("event stream content-type", said)
        elif not isinstance(resp.json, dict):
            fail(f"success body not a JSON object from {req.endpoint}", said)


def check_published(gw: Gateway, req: Req, resp: Response) -> None:
    """An accepted HTTP publish used the next seq (or its key's) and stored what was sent."""
    seq = resp.json.get("seq")
    if type(seq) is not int:
        fail("publish reply without seq", f"{req!r} -> {clip(resp.body)}")
    if req.key in gw.idempotent:
        first, when = gw.idempotent[req.key]
        if time.monotonic() - when < KEY_MEMORY:
            if seq != first:
                fail("Idempotency-Key ignored", f"first seq {first}, now {seq}")
            return
        del gw.idempotent[req.key]  # the server may have forgotten it: no claim either way
        gw.last_seq[gw.rest_topic] = max(gw.last_seq.get(gw.rest_topic) or 0, seq)
        return
    previous, gw.last_seq[gw.rest_topic] = gw.last_seq.get(gw.rest_topic), seq
    if req.key is not None:
        gw.idempotent[req.key] = (seq, time.monotonic())
        while len(gw.idempotent) > KEYS_REMEMBERED:  # oldest first, as the server drops them
            del gw.idempotent[next(iter(gw.idempotent))]
    if previous is not None and seq != previous + 1:
        fail("HTTP publish seq skipped or reused", f"after {previous} got {seq}: {req!r}")
    sent = req.published.value
    query = urllib.parse.urlencode({"since_seq": seq - 1, "limit": 1})
    page = http_full(
        "GET",
        f"{gw.server.url}/topics/{gw.rest_topic}/messages?{query}",
        token=gw.token,
    )
    stored = (page.json or {}).get("messages") or [{}]
    if page.status != 200 or stored[0].get("seq") != seq:
        fail("accepted HTTP publish missing from history", f"{seq}: {clip(page.body)}")
    if isinstance(sent.get("id"), str) and stored[0].get("id") != sent["id"]:
        fail("HTTP publish id changed", f"sent {sent['id']!r}, stored {stored[0].get('id')!r}")
    if not req.published.dups and not same_json(stored[0].get("payload"), sent["payload"]):
        fail(
            "HTTP publish payload changed",
            f"sent {clip(req.body)}, stored {clip(stored[0].get('payload'))}",
        )


def run_rest(gw: Gateway, reqs: list[Req]) -> None:
    """Property 1 for one example; keep track of what it created, registered and published."""
    for req in reqs:
        resp = send(gw, req)
        check_response(req, resp)
        if req.endpoint == "create" and resp.status == 201:
            gw.created.add(parse(req.body).value["name"])
        if req.endpoint == "delete" and resp.status == 200:
            gw.created.discard(urllib.parse.unquote(req.path.rpartition("/")[2]))
        if req.endpoint == "register" and resp.status in (201, 409):
            doc = parse(req.body)
            user = doc.value.get("username") if isinstance(doc.value, dict) else None
            if isinstance(user, str) and not doc.dups:
                known = doc.value.get("password") if resp.status == 201 else None
                gw.accounts[user] = gw.accounts.get(user, known)
        if req.endpoint == "login" and resp.status == 401 and resp.json != gw.login_401:
            fail("login 401 tells accounts apart", f"{resp.json} vs {gw.login_401}")
        if req.published is not None and resp.status in (200, 201):
            check_published(gw, req, resp)


def test_rest_requests_never_get_5xx_and_errors_are_json(target):
    """Property 1; the example count depends on the broker, hence the inner @given."""

    @fuzz_settings(EXAMPLES[target.broker]["rest"])
    @given(rest_case(target))
    def fuzz(reqs: list[Req]) -> None:
        target.run(lambda: run_rest(target, reqs))

    fuzz()


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
    """What the reply to one client message may be (README "WebSocket protocol")."""

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
    if kind == "1024":  # README "Limits": at most 1024 fragments, so exactly 1024 is fine
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
