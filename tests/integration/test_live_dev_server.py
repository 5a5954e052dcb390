"""The Flask dev server serves REST and /ws with the same behaviour (docs/operations.md "Running in production")."""

from __future__ import annotations

import pytest
from harness import check_event, create_topic, http, register, stats_topic, ws_connect
from websockets.exceptions import InvalidStatus


def test_seed_flow_and_auth_on_flask_dev_server(server_factory):
    srv = server_factory(kind="flask")
    token = register(srv)
    topic = create_topic(srv, token)
    assert http("GET", srv.url + "/topics")[0] == 401

    with pytest.raises(InvalidStatus) as refused:
        ws_connect(srv)
    assert refused.value.response.status_code == 401

    with ws_connect(srv, token) as sub, ws_connect(srv, header_token=token) as pub:
        sub.subscribe(topic)
        ack = pub.publish(topic, {"hello": "dev"})
        assert ack["seq"] == 1
        msg = check_event(sub.recv(), topic, seq=1)
        assert msg["payload"] == {"hello": "dev"}
        bad = sub.call({"type": "publish", "topic": topic, "message": {"id": ""}})
        assert bad["type"] == "error" and bad["error"]["code"] == "BAD_REQUEST", bad
        sub.ping()
        stats = stats_topic(srv, topic)
        assert stats["messages"] == 1 and stats["subscribers"] == 1, stats
