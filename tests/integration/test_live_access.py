"""Topic ownership and access against real gunicorn (docs/access.md).

The full matrix: {owner, member, other user, admin} x {subscribe, publish over WS, publish
over HTTP, history, SSE, delete, manage members, see members} x every combination of the
publish and subscribe policies, on the memory broker and on Redis with two gateways of two
workers each (requests alternate between them). The expectations come from the table in
docs/access.md, written out again here, not from the gateway's own policy module.
Then revocation while subscribed: a member taken off a members-only topic is told
(`access_revoked`) and receives nothing more, on the gateway where it is subscribed.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from cluster import postgres_database, running_cluster
from harness import (
    LIMITS_OFF,
    Server,
    http,
    read_head,
    register,
    unique,
    wait_until,
    ws_connect,
)

ROLES = ("owner", "member", "other", "admin")
POLICIES = list(itertools.product(("anyone", "members", "owner"), ("anyone", "members")))
FLASK = str(Path(sys.executable).with_name("flask"))


def expected(action: str, role: str, publish: str, subscribe: str) -> bool:
    """docs/access.md's table."""
    if role in ("owner", "admin"):
        return True
    member = role == "member"
    if action in ("subscribe", "history", "sse"):
        return subscribe == "anyone" or member
    if action in ("publish_ws", "publish_http"):
        return publish == "anyone" or (publish == "members" and member)
    if action == "see_members":
        return member
    return False  # delete, manage_members


class Gateway:
    """One or two servers sharing their state; calls alternate between them."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self._turn = itertools.cycle(servers)

    def next(self) -> Server:
        return next(self._turn)

    def promote(self, username: str) -> None:
        """Make `username` an admin from the shell, as an operator would."""
        srv = self.servers[0]
        env = {**srv.env, "BROKER_URL": "memory://"}  # the command needs only the accounts
        done = subprocess.run(
            [FLASK, "--app", "wsgi", "users", "promote", username],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(request, tmp_path_factory):
    if request.param == "memory":
        srv = Server(tmp_path_factory.mktemp("access"), env=LIMITS_OFF).start()
        try:
            yield Gateway([srv])
        finally:
            srv.close()
        return
    with (
        postgres_database() as url,
        running_cluster(tmp_path_factory.mktemp("access-redis"), url, **LIMITS_OFF) as c,
    ):
        yield Gateway([c.a, c.b])


@pytest.fixture(scope="module")
def users(gateway):
    """A token per role; the admin promoted through the CLI."""
    names = {role: unique(role) for role in ROLES}
    tokens = {role: register(gateway.next(), names[role]) for role in ROLES}
    gateway.promote(names["admin"])
    return names, tokens


def create(gateway, token: str, publish: str = "anyone", subscribe: str = "anyone") -> str:
    name = unique("acl")
    status, body = http(
        "POST",
        gateway.next().url + "/topics",
        {"name": name, "publish": publish, "subscribe": subscribe},
        token=token,
    )
    assert status == 201, body
    assert (body["publish"], body["subscribe"]) == (publish, subscribe), body
    return name


def try_action(gateway, action: str, topic: str, token: str, extra_user: str) -> int | str:
    """Do `action`; return the HTTP status, or the WebSocket reply's type/code."""
    srv = gateway.next()
    base = f"{srv.url}/topics/{topic}"
    if action in ("subscribe", "publish_ws"):
        with ws_connect(srv, token) as ws:
            if action == "subscribe":
                reply = ws.call({"type": "subscribe", "topic": topic})
            else:
                message = {"id": unique("m"), "payload": {"from": "matrix"}}
                reply = ws.call({"type": "publish", "topic": topic, "message": message})
        return reply["type"] if reply["type"] == "ack" else reply["error"]["code"]
    if action == "publish_http":
        return http("POST", base + "/messages", {"payload": 1}, token=token)[0]
    if action == "history":
        return http("GET", base + "/messages", token=token)[0]
    if action == "sse":
        status, sock, _ = open_sse(srv, topic, token)
        sock.close()
        return status
    if action == "see_members":
        return http("GET", base + "/members", token=token)[0]
    if action == "manage_members":
        return http("PUT", f"{base}/members/{extra_user}", token=token)[0]
    raise AssertionError(action)


def open_sse(srv: Server, topic: str, token: str) -> tuple[int, socket.socket, bytes]:
    """GET the topic's event stream; return the status, the open socket and what followed."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    query = urllib.parse.urlencode({"token": token})
    request = f"GET /topics/{topic}/events?{query} HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(request.encode())
    status, _, body = read_head(sock, time.monotonic() + 10)
    return status, sock, body


OK = {"ack", 200, 201}
REFUSED = {"FORBIDDEN", 403}


@pytest.mark.parametrize(("publish", "subscribe"), POLICIES, ids=lambda p: p)
def test_the_access_matrix(gateway, users, publish, subscribe):
    names, tokens = users
    topic = create(gateway, tokens["owner"], publish, subscribe)
    status = http(
        "PUT",
        f"{gateway.next().url}/topics/{topic}/members/{names['member']}",
        token=tokens["owner"],
    )[0]
    assert status == 200
    wrong = []
    actions = (
        "subscribe",
        "publish_ws",
        "publish_http",
        "history",
        "sse",
        "see_members",
        "manage_members",
    )
    for action, role in itertools.product(actions, ROLES):
        got = try_action(gateway, action, topic, tokens[role], names["other"])
        want = OK if expected(action, role, publish, subscribe) else REFUSED
        if got not in want:
            wrong.append(f"{role} {action}: got {got}, want one of {sorted(map(str, want))}")
    # Delete last: refused to member and other, allowed to admin (here) and owner (below).
    for role in ("member", "other"):
        got = http("DELETE", f"{gateway.next().url}/topics/{topic}", token=tokens[role])[0]
        if got != 403:
            wrong.append(f"{role} delete: got {got}, want 403")
    second = create(gateway, tokens["owner"], publish, subscribe)
    for role, name in (("admin", topic), ("owner", second)):
        got = http("DELETE", f"{gateway.next().url}/topics/{name}", token=tokens[role])[0]
        if got != 200:
            wrong.append(f"{role} delete: got {got}, want 200")
    assert not wrong, "\n".join(wrong)


def test_topics_lists_what_the_caller_may_read_with_owner_and_policies(gateway, users):
    names, tokens = users
    private = create(gateway, tokens["owner"], "owner", "members")
    public = create(gateway, tokens["owner"], "members", "anyone")

    def listed(role: str) -> dict:
        status, body = http("GET", gateway.next().url + "/topics", token=tokens[role])
        assert status == 200, body
        return {t["name"]: t for t in body["topics"] if t["name"] in (private, public)}

    assert set(listed("other")) == {public}
    assert listed("other")[public] == {
        "name": public,
        "subscribers": 0,
        "owner": names["owner"],
        "publish": "members",
        "subscribe": "anyone",
    }
    assert set(listed("owner")) == {private, public}
    assert set(listed("admin")) == {private, public}
    http(
        "PUT",
        f"{gateway.next().url}/topics/{private}/members/{names['member']}",
        token=tokens["owner"],
    )
    wait_until(lambda: set(listed("member")) == {private, public}, 5, what="the member's list")
    status, body = http(
        "GET", f"{gateway.next().url}/topics/{private}/members", token=tokens["member"]
    )
    assert status == 200 and body["members"] == sorted([names["owner"], names["member"]]), body
    status, stats = http("GET", gateway.next().url + "/stats")
    assert public in stats["topics"] and private not in stats["topics"]


def test_members_routes_answer_404_for_unknown_topics_and_users(gateway, users):
    names, tokens = users
    topic = create(gateway, tokens["owner"], "anyone", "members")
    url = gateway.next().url
    assert (
        http(
            "PUT", f"{url}/topics/{unique('none')}/members/{names['member']}", token=tokens["owner"]
        )[0]
        == 404
    )
    assert (
        http("PUT", f"{url}/topics/{topic}/members/{unique('ghost')}", token=tokens["owner"])[0]
        == 404
    )
    # A user who may not manage the topic learns nothing about which users exist.
    assert (
        http("PUT", f"{url}/topics/{topic}/members/{unique('ghost')}", token=tokens["other"])[0]
        == 403
    )
    # Removing is idempotent.
    for _ in range(2):
        assert (
            http("DELETE", f"{url}/topics/{topic}/members/{names['other']}", token=tokens["owner"])[
                0
            ]
            == 200
        )


def test_a_member_removed_while_subscribed_is_told_and_receives_nothing_more(gateway, users):
    names, tokens = users
    topic = create(gateway, tokens["owner"], "anyone", "members")
    member_url = f"/topics/{topic}/members/{names['member']}"
    assert http("PUT", gateway.servers[0].url + member_url, token=tokens["owner"])[0] == 200
    # The member subscribes on the last server, the owner acts on the first: with Redis the
    # revocation reaches another gateway's worker.
    sub_srv, act_srv = gateway.servers[-1], gateway.servers[0]
    with ws_connect(sub_srv, tokens["member"]) as sub, ws_connect(act_srv, tokens["owner"]) as pub:
        sub.subscribe(topic)
        first = pub.publish(topic, "before")
        assert sub.events(1)[0]["message"]["seq"] == first["seq"]
        assert http("DELETE", act_srv.url + member_url, token=tokens["owner"])[0] == 200
        notice = sub.recv(timeout=5)
        assert notice["type"] == "info" and notice["msg"] == "access_revoked", notice
        assert notice["topic"] == topic
        pub.publish(topic, "after")
        assert [f for f in sub.quiet(0.5) if f.get("type") == "event"] == []
        again = sub.call({"type": "subscribe", "topic": topic})
        assert again["type"] == "error" and again["error"]["code"] == "FORBIDDEN", again
        # Still connected: the socket serves the next request.
        assert sub.ping()["type"] == "pong"


def test_a_revoked_sse_stream_ends_with_access_revoked(gateway, users):
    names, tokens = users
    topic = create(gateway, tokens["owner"], "anyone", "members")
    member_url = f"/topics/{topic}/members/{names['member']}"
    assert http("PUT", gateway.servers[0].url + member_url, token=tokens["owner"])[0] == 200
    status, sock, body = open_sse(gateway.servers[-1], topic, tokens["member"])
    with sock:
        assert status == 200
        while b"event: subscribed" not in body:
            body += sock.recv(65536)
        assert http("DELETE", gateway.servers[0].url + member_url, token=tokens["owner"])[0] == 200
        deadline = time.monotonic() + 10
        while b"event: access_revoked" not in body and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    assert b"event: access_revoked" in body, body


if os.environ.get("CI") and not Path(FLASK).exists():  # pragma: no cover - set-up error
    raise RuntimeError(f"{FLASK} is missing: the venv has no flask command")


def test_member_changes_reach_every_worker_within_a_second(gateway, users):
    """Publishes check a copy of the topic's access at most one second old (docs/access.md)."""
    names, tokens = users
    topic = create(gateway, tokens["owner"], "members", "anyone")
    member_url = f"/topics/{topic}/members/{names['member']}"

    def publishes() -> list[int]:
        # Several per server, so that every worker (two per gateway) answers some.
        return [
            http(
                "POST", f"{srv.url}/topics/{topic}/messages", {"payload": 1}, token=tokens["member"]
            )[0]
            for srv in gateway.servers
            for _ in range(6)
        ]

    assert set(publishes()) == {403}  # and every worker now holds a copy without the member
    assert http("PUT", gateway.servers[0].url + member_url, token=tokens["owner"])[0] == 200
    time.sleep(1.1)  # deliberate: the longest a worker may keep its copy (ACCESS_SECONDS)
    assert set(publishes()) == {201}
    assert http("DELETE", gateway.servers[0].url + member_url, token=tokens["owner"])[0] == 200
    time.sleep(1.1)
    assert set(publishes()) == {403}
