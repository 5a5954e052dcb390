"""Heartbeat frames (docs/delivery.md)."""

from __future__ import annotations

import time

from harness import TS_RE, RawWS, create_topic, register, stats_topic, wait_until, ws_connect


def test_heartbeat_pings_arrive_repeatedly(server_factory):
    srv = server_factory(env={"HEARTBEAT_INTERVAL": 1})
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as idle, ws_connect(srv, token) as subscribed:
        subscribed.subscribe(topic)
        for client in (idle, subscribed):
            stamps = []
            deadline = time.monotonic() + 8
            while len(stamps) < 3 and time.monotonic() < deadline:
                frame = client.recv(
                    timeout=max(0.1, deadline - time.monotonic()), skip_heartbeat=False
                )
                assert frame["type"] == "info" and frame["msg"] == "ping", frame
                assert TS_RE.match(frame["ts"]), frame
                stamps.append(frame["ts"])
            assert len(stamps) == 3, (
                f"only {len(stamps)} heartbeats in 8 s with HEARTBEAT_INTERVAL=1"
            )
            assert stamps == sorted(set(stamps)), stamps
        # Heartbeats do not disturb request/reply.
        subscribed.ping()


def test_silent_peer_is_found_by_websocket_pings_and_removed(server_factory):
    """A client that answers no WebSocket ping is dropped within a few intervals (docs/delivery.md)."""
    srv = server_factory(env={"HEARTBEAT_INTERVAL": 1})
    token = register(srv)
    topic = create_topic(srv, token)
    with ws_connect(srv, token) as live:
        live.subscribe(topic)
        silent = RawWS(srv.port, token)
        silent.send_json({"type": "subscribe", "topic": topic, "request_id": "s"})
        wait_until(lambda: stats_topic(srv, topic)["subscribers"] == 2, 5, what="2 subscribers")
        # The raw client now neither reads nor answers pings; the live one pongs automatically.
        wait_until(
            lambda: stats_topic(srv, topic)["subscribers"] == 1,
            12,
            what="the silent subscriber to be dropped",
        )
        live.ping()  # the live client was not touched
        silent.sock.close()
    assert "ws_ping_timeout" in srv.log_text()


def test_every_connection_gets_each_heartbeat_when_there_are_hundreds(server_factory):
    """The registry beats in slices, yielding between them; no connection may be skipped."""
    srv = server_factory(env={"HEARTBEAT_INTERVAL": 2})
    token = register(srv)
    clients = [ws_connect(srv, token) for _ in range(250)]
    try:
        for client in clients:
            frame = client.recv(timeout=5, skip_heartbeat=False)
            assert frame["type"] == "info" and frame["msg"] == "ping", frame
        # And a second beat, to every one of them (they answer the WebSocket pings).
        for client in clients:
            frame = client.recv(timeout=5, skip_heartbeat=False)
            assert frame["type"] == "info" and frame["msg"] == "ping", frame
        assert "ws_ping_timeout" not in srv.log_text()
    finally:
        for client in clients:
            client.close()
