"""Resume by seq over real sockets, on the memory and the Redis broker (issue 5, docs/rest-api.md "Messages over HTTP and server-sent events")."""

from __future__ import annotations

import pytest
from cluster import RedisServer
from harness import check_event, create_topic, http, register, ws_connect


@pytest.fixture(params=["memory", "redis"])
def gateway(request, server_factory, tmp_path):
    """A gateway with a small ring, on each broker; returns (server, restart)."""
    env = {"RING_BUFFER_SIZE": 20, "HEARTBEAT_INTERVAL": 0}
    if request.param == "redis":
        redis_server = RedisServer(tmp_path / "redis")
        (tmp_path / "redis").mkdir()
        redis_server.start()
        request.addfinalizer(redis_server.stop)
        env["BROKER_URL"] = redis_server.url
    return server_factory(env=env), request.param


def test_reconnect_with_since_seq_gets_exactly_what_was_missed(gateway):
    srv, _ = gateway
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as publisher:
        with ws_connect(srv, token) as first:
            ack = first.subscribe(topic)
            assert (ack["seq"], isinstance(ack["epoch"], str)) == (0, True)
            for i in range(3):
                publisher.publish(topic, {"i": i})
            seen = [check_event(f, topic)["seq"] for f in first.events(3)]
            assert seen == [1, 2, 3]
            epoch = ack["epoch"]
        for i in range(3, 13):  # published while the subscriber is away
            publisher.publish(topic, {"i": i})
        with ws_connect(srv, token) as back:
            ack = back.subscribe(topic, since_seq=seen[-1], epoch=epoch)
            assert (ack["recovered"], ack["seq"], ack["epoch"]) == (True, 13, epoch)
            replayed = [check_event(f, topic) for f in back.events(10)]
            assert [m["seq"] for m in replayed] == list(range(4, 14))
            assert [m["payload"] for m in replayed] == [{"i": i} for i in range(3, 13)]
            publisher.publish(topic, {"i": 13})
            assert check_event(back.recv(), topic, seq=14)
            assert back.quiet() == []  # nothing doubled


def test_resume_past_the_ring_says_not_recovered(gateway):
    srv, _ = gateway
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as publisher, ws_connect(srv, token) as client:
        epoch = client.subscribe(topic)["epoch"]
        client.unsubscribe(topic)
        for i in range(30):  # more than RING_BUFFER_SIZE=20
            publisher.publish(topic, i)
        ack = client.subscribe(topic, since_seq=2, epoch=epoch)
        assert (ack["recovered"], ack["seq"]) == (False, 30)
        assert [check_event(f, topic)["seq"] for f in client.events(20)] == list(range(11, 31))


def test_a_recreated_topic_is_a_new_epoch(gateway):
    srv, _ = gateway
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as client:
        old = client.subscribe(topic)["epoch"]
        client.publish(topic, "old")
        check_event(client.recv(), topic, seq=1)
        assert http("DELETE", f"{srv.url}/topics/{topic}", token=token)[0] == 200
        assert client.recv()["msg"] == "topic_deleted"
        create_topic(srv, token, topic)
        client.publish(topic, "new")
        ack = client.subscribe(topic, since_seq=1, epoch=old)
        assert ack["epoch"] != old and ack["recovered"] is False
        replayed = check_event(client.recv(), topic, seq=1)
        assert replayed["payload"] == "new"


def test_since_seq_and_last_n_together_is_a_bad_request(gateway):
    srv, _ = gateway
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as client:
        reply = client.call({"type": "subscribe", "topic": topic, "since_seq": 0, "last_n": 1})
        assert reply["type"] == "error" and reply["error"]["code"] == "BAD_REQUEST"
        client.ping()


def test_a_restarted_memory_gateway_starts_new_epochs(server_factory):
    srv = server_factory(env={"HEARTBEAT_INTERVAL": 0})
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as client:
        epoch = client.subscribe(topic)["epoch"]
        client.publish(topic, 1)
    assert srv.stop() == 0
    srv.start()
    create_topic(srv, token, topic)  # memory broker: topics do not survive the restart
    with ws_connect(srv, token) as client:
        ack = client.subscribe(topic, since_seq=1, epoch=epoch)
        assert ack["epoch"] != epoch and ack["recovered"] is False and ack["seq"] == 0
