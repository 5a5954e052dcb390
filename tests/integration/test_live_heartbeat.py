"""Heartbeat frames (SPEC §5.8)."""

from __future__ import annotations

import time

from harness import TS_RE, create_topic, register, ws_connect


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
