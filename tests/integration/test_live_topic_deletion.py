"""Deleting a topic under live subscribers, then re-creating it (docs/rest-api.md, docs/delivery.md)."""

from __future__ import annotations

from harness import check_event, create_topic, http, stats_topic, ws_connect


def test_delete_with_live_subscribers_then_recreate(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as a, ws_connect(gw, token) as b, ws_connect(gw, token) as pub:
        a.subscribe(topic)
        b.subscribe(topic)
        pub.publish(topic, "before")
        for client in (a, b):
            check_event(client.recv(), topic, seq=1)

        status, body = http("DELETE", f"{gw.url}/topics/{topic}", token=token)
        assert status == 200 and body["status"] == "deleted" and body["topic"] == topic, body

        for client in (a, b):
            info = client.recv()
            assert info["type"] == "info" and info["msg"] == "topic_deleted", info
            assert info["topic"] == topic, info
            client.ping()  # the socket stays open
            assert client.barrier() == []

        reply = pub.call({"type": "publish", "topic": topic, "message": {"id": "x", "payload": 1}})
        assert reply["type"] == "error" and reply["error"]["code"] == "TOPIC_NOT_FOUND", reply
        reply = a.call({"type": "subscribe", "topic": topic})
        assert reply["type"] == "error" and reply["error"]["code"] == "TOPIC_NOT_FOUND", reply
        assert stats_topic(gw, topic) is None
        status, body = http("GET", gw.url + "/topics", token=token)
        assert status == 200 and topic not in [t["name"] for t in body["topics"]], body
        status, body = http("DELETE", f"{gw.url}/topics/{topic}", token=token)
        assert status == 404 and isinstance(body.get("error"), str), (status, body)

        create_topic(gw, token, topic)
        stats = stats_topic(gw, topic)
        assert stats["messages"] == 0 and stats["subscribers"] == 0, stats
        assert pub.publish(topic, "fresh")["seq"] == 1
        # Old subscribers were dropped with the old topic.
        assert a.barrier() + b.barrier() + a.quiet() == []

        with ws_connect(gw, token) as c:
            c.subscribe(topic, last_n=100)
            msg = check_event(c.recv(), topic, seq=1)
            assert msg["payload"] == "fresh"
            assert c.barrier() == [], "history of the deleted topic leaked into the new one"
        stats = stats_topic(gw, topic)
        assert stats["messages"] == 1, stats
