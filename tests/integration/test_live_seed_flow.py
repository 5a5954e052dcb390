"""The seed's user journey end to end, and two sockets sharing one token (docs/rest-api.md, docs/protocol.md)."""

from __future__ import annotations

import json

from harness import (
    PASSWORD,
    TS_RE,
    check_event,
    create_topic,
    http,
    register,
    stats_topic,
    unique,
    ws_connect,
)

USER_FIELDS = {"id", "username", "email", "created_at", "updated_at"}


def assert_user(user: dict, username: str, email: str | None) -> None:
    assert set(user) >= USER_FIELDS, user
    assert user["username"] == username and user["email"] == email, user
    assert TS_RE.match(user["created_at"]) and TS_RE.match(user["updated_at"]), user


def test_register_login_topic_subscribe_publish(gw):
    username, email = unique("alice"), "alice@example.com"
    status, body = http(
        "POST",
        gw.url + "/users/register",
        {"username": username, "password": PASSWORD, "email": email},
    )
    assert status == 201, body
    assert body["status"] == "registered" and isinstance(body["token"], str), body
    assert_user(body["user"], username, email)
    assert PASSWORD not in json.dumps(body) and "hash" not in json.dumps(body["user"]).lower()

    status, body = http(
        "POST", gw.url + "/users/login", {"username": username, "password": PASSWORD}
    )
    assert status == 200, body
    assert body["status"] == "logged_in", body
    assert_user(body["user"], username, email)
    token = body["token"]

    status, body = http("GET", gw.url + "/users/profile", token=token)
    assert status == 200, body
    assert_user(body["user"], username, email)

    topic = unique("orders")
    status, body = http("POST", gw.url + "/topics", {"name": topic}, token=token)
    assert status == 201 and body["status"] == "created" and body["topic"] == topic, body
    status, body = http("GET", gw.url + "/topics", token=token)
    assert status == 200 and {"name": topic, "subscribers": 0} in [
        {"name": t["name"], "subscribers": t["subscribers"]} for t in body["topics"]
    ], body

    payload = {
        "order": 42,
        "items": [1, "two", None, 3.5, True],
        "text": "héllo ✓ 🚀",
        "deep": {"a": {}},
    }
    with ws_connect(gw, token) as sub, ws_connect(gw, header_token=token) as pub:
        ack = sub.call({"type": "subscribe", "topic": topic, "request_id": "sub-1"})
        assert ack["type"] == "ack" and ack["request_id"] == "sub-1", ack
        assert ack["topic"] == topic and ack["status"] == "ok", ack

        ack = pub.call(
            {
                "type": "publish",
                "topic": topic,
                "request_id": "pub-1",
                "message": {"id": "m1", "payload": payload},
            }
        )
        assert ack["type"] == "ack" and ack["request_id"] == "pub-1", ack
        assert ack["topic"] == topic and ack["status"] == "ok" and ack["seq"] == 1, ack

        msg = check_event(sub.recv(), topic, seq=1)
        assert msg["id"] == "m1" and msg["payload"] == payload, msg
        assert sub.barrier() == [], "subscriber got more than one event"
        assert pub.barrier() == [], "the publisher is not subscribed and must get only its ack"

        stats = stats_topic(gw, topic)
        assert stats["messages"] == 1 and stats["subscribers"] == 1, stats
        status, health = http("GET", gw.url + "/health")
        assert status == 200 and health["subscribers"] >= 1 and health["topics"] >= 1, health


def test_two_sockets_with_one_token_are_independent_subscribers(gw):
    token = register(gw)
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as a, ws_connect(gw, token) as b, ws_connect(gw, token) as pub:
        a.subscribe(topic)
        b.subscribe(topic)
        assert stats_topic(gw, topic)["subscribers"] == 2
        seqs = [pub.publish(topic, {"i": i})["seq"] for i in range(3)]
        assert seqs == [1, 2, 3]
        for client in (a, b):
            got = [check_event(f, topic)["seq"] for f in client.events(3)]
            assert got == [1, 2, 3]
            assert client.barrier() == []

        a.close()
        pub.publish(topic, "after a left")
        assert check_event(b.recv(), topic, seq=4)["payload"] == "after a left"
