"""Property-based fuzzing of a live gateway's REST API with Hypothesis (docs/rest-api.md, docs/configuration.md "Limits").

Property 1: whatever the body, headers, path and query, no answer is 5xx and every 4xx is a JSON
object with a string "error"; a request that is valid by construction gets its documented status,
an accepted payload comes back unchanged, and no refused publish spends a `seq`. The requests
cover register, login, topic creation and deletion, publish (with Idempotency-Key), history,
server-sent events, WebSocket upgrade requests with odd handshake headers, and other routes.

After every example the server must still be healthy (fuzzing.Gateway.check_alive). The server,
the JSON oracle and the shared strategies live in fuzzing.py.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from http.client import HTTPConnection
from typing import Any

from fuzzing import (
    DEPTH_OK,
    DEPTH_REFUSED,
    EXAMPLES,
    FORGED,
    MAX_BYTES,
    SLOT,
    TOPIC_RE,
    Gateway,
    Parsed,
    Printed,
    check_served,
    clip,
    deep_values,
    dumps,
    fail,
    fuzz_settings,
    mutated,
    parse,
    payloads,
    same_json,
    weighted,
    weird_tokens,
)
from fuzzing import target as target  # the fixture, taken by name: "as" marks it as used
from harness import PASSWORD, Response, http_full
from hypothesis import given
from hypothesis import strategies as st

# Idempotency keys are kept a while and only so many per topic (docs/configuration.md "Limits" leaves both open; the
# gateway keeps 1000 for 5 minutes): the oracle trusts less than that.
KEY_MEMORY = 240.0
KEYS_REMEMBERED = 500
POLICIES = ("anyone", "members", "owner")
USERNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)


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
    """True / False per docs/rest-api.md, None where "text on both sides" is a matter of taste."""
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
    """The statuses docs/rest-api.md allows for a body on a route; 400 joins them where the spec wavers."""
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
        # Access policies (docs/access.md): absent means "anyone"; another value is a 400.
        if doc.get("publish", "anyone") not in ("anyone", "members", "owner"):
            return {400}
        if doc.get("subscribe", "anyone") not in ("anyone", "members"):
            return {400}
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
    """POST /topics, with access policies now and then."""
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
    """GET /ws, each handshake header good, odd, junk or missing (docs/configuration.md "Limits")."""
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


def test_well_behaved_client_is_served_after_fuzzing(target):
    """Property 3 after the REST fuzzing: health, subscribe/publish/receive, register."""
    check_served(target)
