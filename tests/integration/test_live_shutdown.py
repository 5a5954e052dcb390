"""SIGTERM drains queued events, says goodbye with info/shutdown and 1001, exits 0 (docs/delivery.md)."""

from __future__ import annotations

import os
import signal
import time
from http.client import HTTPException

import pytest
from harness import (
    RawClosed,
    RawWS,
    check_event,
    create_topic,
    http,
    register,
    wait_until,
    ws_connect,
)
from websockets.exceptions import InvalidStatus

GRACE = 4


def new_connection_outcome(srv, token) -> str:
    """Try a fresh HTTP request and a fresh WebSocket; describe what happened."""
    outcomes = []
    try:
        status, _ = http("GET", srv.url + "/health", timeout=3)
        outcomes.append(f"http {status}")
    except TimeoutError:
        outcomes.append("http hung")
    except (OSError, HTTPException) as exc:
        outcomes.append(f"http refused ({type(exc).__name__})")
    try:
        ws_connect(srv, token).close()
        outcomes.append("ws 101")
    except InvalidStatus as exc:
        outcomes.append(f"ws {exc.response.status_code}")
    except TimeoutError:
        outcomes.append("ws hung")
    except Exception as exc:  # noqa: BLE001 - any refusal shape is fine
        outcomes.append(f"ws refused ({type(exc).__name__})")
    return ", ".join(outcomes)


def assert_said_goodbye(client, timeout: float) -> None:
    """The client's last frames are info/shutdown (heartbeats aside), then a 1001 close."""
    got, code = client.until_closed(timeout=timeout)
    got = [f for f in got if not (f["type"] == "info" and f.get("msg") == "ping")]
    assert [(f["type"], f.get("msg")) for f in got] == [("info", "shutdown")], got
    assert code == 1001, code


@pytest.mark.parametrize("target", ["master", "process group"])
def test_sigterm_flushes_queued_events_then_shutdown_and_1001(server_factory, target):
    """`process group` is what systemd and Ctrl-Z/kill -TERM -PGID do: the worker gets SIGTERM
    twice, once directly and once from the master; the drain must still run to the end."""
    srv = server_factory(env={"SHUTDOWN_GRACE_SECONDS": GRACE, "SUBSCRIBER_QUEUE_SIZE": 200})
    token = register(srv)
    topic = create_topic(srv, token)

    # A subscriber that is not reading yet, with a tiny receive buffer: events pile up server side.
    sub = RawWS(srv.port, token, rcvbuf=4096)
    sub.send_json({"type": "subscribe", "topic": topic, "request_id": "s"})
    assert sub.recv_json()["type"] == "ack"
    idle = ws_connect(srv, token)
    pub = ws_connect(srv, header_token=token)
    # ~3 MB fit in the kernel buffers on loopback; 300 x 16 KB leaves ~100 events queued in
    # the server (below SUBSCRIBER_QUEUE_SIZE, so none may be dropped) when SIGTERM arrives.
    sent = [pub.publish(topic, "z" * 16384)["seq"] for _ in range(300)]
    assert sent == list(range(1, 301))

    if target == "master":
        srv.send_signal()
    else:
        os.killpg(srv.proc.pid, signal.SIGTERM)
    # The drain has begun (well inside the grace period, the subscriber holding unread events).
    wait_until(lambda: "shutdown_begin" in srv.log_text(), 5, what="the drain to begin")
    outcome = new_connection_outcome(srv, token)
    # Read only after gunicorn's own wait would have ended (its pool empties at once, since
    # upgraded sockets leave it): the worker must be waiting for the drain, not for gunicorn.
    # Deliberate elapsed time, not synchronisation.
    time.sleep(2.0)

    frames = []
    try:
        while True:
            frames.append(sub.recv_json(timeout=GRACE + 3))
    except RawClosed as closed:
        close_code = closed.code
    events = [check_event(f, topic)["seq"] for f in frames if f["type"] == "event"]
    assert events == sent, f"queued events lost at shutdown: got {len(events)} of {len(sent)}"
    non_events = [f for f in frames if f["type"] != "event" and f.get("msg") != "ping"]
    assert [(f["type"], f.get("msg")) for f in non_events] == [("info", "shutdown")], non_events
    assert frames[-1]["type"] == "info" and frames[-1]["msg"] == "shutdown", frames[-1]
    assert close_code == 1001, f"close code {close_code}, expected 1001"
    sub.close()

    for client in (idle, pub):
        assert_said_goodbye(client, timeout=GRACE + 3)

    rc = srv.wait_exit(GRACE + 5)
    assert rc == 0, f"exit code {rc} after SIGTERM\n{srv.log_tail()}"
    assert not any(word in outcome for word in ("200", "101", "hung")), (
        f"a new connection during the drain was served: {outcome}\n{srv.log_tail()}"
    )


def test_ctrl_c_says_goodbye_and_exits_without_a_traceback(server_factory):
    """Ctrl-C in the terminal of `make run`: SIGINT to the master and the worker at once."""
    srv = server_factory(env={"SHUTDOWN_GRACE_SECONDS": GRACE})
    token = register(srv)
    topic = create_topic(srv, token)
    client = ws_connect(srv, token)
    assert client.subscribe(topic)["type"] == "ack"
    os.killpg(srv.proc.pid, signal.SIGINT)
    assert_said_goodbye(client, timeout=GRACE + 5)
    rc = srv.wait_exit(GRACE + 10)
    assert rc == 0, f"exit code {rc} after Ctrl-C\n{srv.log_tail()}"
    log = srv.log_text()
    assert "Traceback" not in log and "failed with SystemExit" not in log, srv.log_tail()
