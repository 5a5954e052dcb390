"""HTTP publish, history and the SSE stream against a real gunicorn (issue 5, docs/rest-api.md "Messages over HTTP and server-sent events")."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
import urllib.parse
import uuid

import pytest
from cluster import RedisServer
from harness import (
    check_event,
    create_topic,
    http,
    http_full,
    register,
    stats_topic,
    wait_until,
    ws_connect,
)


class SseClosed(Exception):
    """The server ended the stream (terminal chunk) or closed the connection."""


class SseClient:
    """A strict HTTP/1.1 SSE reader on a raw socket: chunked decoding, every read timed."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw = b""  # bytes off the socket, not yet de-chunked
        self.text = b""  # de-chunked body, not yet parsed into events
        self.ended = False
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in self.raw:
            self._recv(deadline)
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        self.headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        if self.status != 200:
            length = int(self.headers.get("content-length", "0"))
            while len(self.raw) < length:
                self._recv(deadline)
            self.body = json.loads(self.raw[:length])
        else:
            assert self.headers.get("transfer-encoding") == "chunked", self.headers

    def _recv(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the SSE stream")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no data from the SSE stream") from None
        if not data:
            raise SseClosed("connection closed")
        self.raw += data

    def _dechunk(self) -> None:
        while not self.ended and b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            assert rest[size : size + 2] == b"\r\n", rest[: size + 2]
            self.text += rest[:size]
            self.raw = rest[size + 2 :]
            if size == 0:
                self.ended = True

    def next(self, timeout: float = 5.0) -> dict:
        """The next event ({"event","data","id"?}) or comment ({"comment"})."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.text:
            self._dechunk()
            if b"\n\n" in self.text:
                break
            if self.ended:
                raise SseClosed("the stream ended")
            self._recv(deadline)
        block, self.text = self.text.split(b"\n\n", 1)
        if block.startswith(b":"):
            return {"comment": block[1:].decode().strip()}
        fields = dict(line.split(": ", 1) for line in block.decode().split("\n"))
        item = {"event": fields["event"], "data": json.loads(fields["data"])}
        if "id" in fields:
            item["id"] = int(fields["id"])
        return item

    def next_event(self, timeout: float = 5.0) -> dict:
        """The next event, heartbeat comments skipped."""
        deadline = time.monotonic() + timeout
        while "comment" in (item := self.next(max(0.01, deadline - time.monotonic()))):
            pass
        return item

    def messages(self, count: int, timeout: float = 10.0) -> list[dict]:
        items = [self.next_event(timeout) for _ in range(count)]
        assert all(i["event"] == "message" for i in items), items
        return items

    def nothing_for(self, seconds: float) -> None:
        """Assert that no event arrives within `seconds` (comments allowed)."""
        with contextlib.suppress(TimeoutError):
            item = self.next_event(seconds)
            raise AssertionError(f"unexpected {item}")

    def until_end(self, timeout: float = 10.0) -> list[dict]:
        """Every event up to the end of the stream."""
        items = []
        with contextlib.suppress(SseClosed):
            while True:
                items.append(self.next_event(timeout))
        return items

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def sse(srv, topic, token=None, header_token=None, headers=None, query=None) -> SseClient:
    params = dict(query or {})
    if token:
        params["token"] = token
    path = f"/topics/{topic}/events" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    sent = dict(headers or {})
    if header_token:
        sent["Authorization"] = f"Bearer {header_token}"
    return SseClient(srv.port, path, sent)


def publish(srv, token, topic, payload, msg_id=None, key=None):
    body = {"payload": payload} if msg_id is None else {"id": msg_id, "payload": payload}
    headers = {} if key is None else {"Idempotency-Key": key}
    status, reply = http(
        "POST", f"{srv.url}/topics/{topic}/messages", body, token=token, headers=headers
    )
    assert status == 201, (status, reply)
    return reply


# --- publish and history ---------------------------------------------------------------------


def test_http_publish_reaches_a_websocket_subscriber(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as sub:
        sub.subscribe(topic)
        first = publish(gw, token, topic, {"order": 1}, msg_id="m1")
        second = publish(gw, token, topic, {"order": 2})
        assert (first["topic"], first["id"], first["seq"]) == (topic, "m1", 1)
        assert second["seq"] == 2 and len(second["id"]) == 32
        events = [check_event(f, topic) for f in sub.events(2)]
        assert [(m["id"], m["payload"], m["seq"]) for m in events] == [
            ("m1", {"order": 1}, 1),
            (second["id"], {"order": 2}, 2),
        ]
        assert events[0]["timestamp"] == first["timestamp"]


def test_idempotent_publish_retried_three_times_is_one_event(gw, token):
    topic = create_topic(gw, token)
    key = uuid.uuid4().hex
    with ws_connect(gw, token) as sub:
        sub.subscribe(topic)
        replies = [publish(gw, token, topic, {"try": n}, key=key) for n in range(3)]
        assert replies[0] == replies[1] == replies[2] and replies[0]["seq"] == 1
        [event] = sub.events(1)
        assert check_event(event, topic, 1)["payload"] == {"try": 0}
        assert sub.quiet(0.5) == []
    assert stats_topic(gw, topic)["messages"] == 1


def test_history_with_since_seq_limit_and_complete(server_factory):
    srv = server_factory(env={"RING_BUFFER_SIZE": 5})
    token = register(srv)
    topic = create_topic(srv, token)
    url = f"{srv.url}/topics/{topic}/messages"
    sent = [publish(srv, token, topic, {"n": n}, msg_id=f"m{n}") for n in range(8)]
    status, body = http("GET", url, token=token)
    assert status == 200
    assert (body["topic"], body["seq"], body["complete"]) == (topic, 8, False)
    assert [m["seq"] for m in body["messages"]] == [4, 5, 6, 7, 8]
    assert body["messages"][0] == {
        "id": "m3",
        "payload": {"n": 3},
        "topic": topic,
        "timestamp": sent[3]["timestamp"],
        "seq": 4,
    }
    status, body = http("GET", f"{url}?since_seq=3&limit=2", token=token)
    assert ([m["seq"] for m in body["messages"]], body["complete"]) == ([4, 5], True)
    for bad in ("since_seq=-1", "limit=0", "limit=1001", "since_seq=x"):
        status, body = http("GET", f"{url}?{bad}", token=token)
        assert status == 400 and "error" in body, (bad, status, body)
    assert http("GET", f"{srv.url}/topics/missing/messages", token=token)[0] == 404
    assert http("GET", url)[0] == 401
    status, _ = http("POST", url, {"id": ""}, token=token)
    assert status == 400


# --- SSE -------------------------------------------------------------------------------------


def resume_scenario(srv) -> None:
    """Stream, disconnect, miss some, reconnect with Last-Event-ID: exactly the missed ones."""
    token = register(srv)
    topic = create_topic(srv, token)
    stream = sse(srv, topic, header_token=token)
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    subscribed = stream.next_event()
    assert subscribed["event"] == "subscribed", subscribed
    assert (subscribed["data"]["seq"], subscribed["data"]["recovered"]) == (0, False)
    epoch = subscribed["data"]["epoch"]
    sent = [publish(srv, token, topic, {"n": n}) for n in range(3)]
    got = stream.messages(3)
    assert [m["id"] for m in got] == [1, 2, 3]
    assert [m["data"]["id"] for m in got] == [s["id"] for s in sent]
    assert got[0]["data"] == {
        "id": sent[0]["id"],
        "payload": {"n": 0},
        "topic": topic,
        "timestamp": sent[0]["timestamp"],
        "seq": 1,
    }
    stream.close()

    missed = [publish(srv, token, topic, {"n": n})["seq"] for n in range(3, 8)]
    back = sse(srv, topic, token=token, headers={"Last-Event-ID": "3"}, query={"epoch": epoch})
    subscribed = back.next_event()
    assert subscribed["event"] == "subscribed"
    assert subscribed["data"] == {"topic": topic, "seq": 8, "epoch": epoch, "recovered": True}
    assert [m["id"] for m in back.messages(5)] == missed == [4, 5, 6, 7, 8]
    back.nothing_for(0.5)
    publish(srv, token, topic, {"n": 8})
    assert [m["id"] for m in back.messages(1)] == [9]
    back.close()


def test_sse_resume_with_last_event_id_memory(server_factory):
    resume_scenario(server_factory(env={"HEARTBEAT_INTERVAL": 0}))


def test_sse_resume_with_last_event_id_redis(server_factory, tmp_path):
    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        env = {"BROKER_URL": redis_server.url, "WEB_CONCURRENCY": 1, "HEARTBEAT_INTERVAL": 0}
        resume_scenario(server_factory(env=env))
    finally:
        redis_server.stop()


def test_sse_client_that_goes_away_is_unsubscribed_at_once(gw, token):
    topic = create_topic(gw, token)
    stream = sse(gw, topic, token=token)
    stream.next_event()
    assert stats_topic(gw, topic)["subscribers"] == 1
    stream.close()
    wait_until(lambda: stats_topic(gw, topic)["subscribers"] == 0, 5, what="unsubscribe")
    assert f"topic={topic} reason=client_gone" in gw.log_text()


def test_sse_topic_deletion_ends_the_stream(gw, token):
    topic = create_topic(gw, token)
    stream = sse(gw, topic, header_token=token)
    stream.next_event()
    publish(gw, token, topic, "last words")
    assert http("DELETE", f"{gw.url}/topics/{topic}", token=token)[0] == 200
    items = stream.until_end()
    assert [(i["event"], i.get("id")) for i in items] == [("message", 1), ("topic_deleted", None)]
    assert items[-1]["data"] == {"topic": topic}
    assert stream.ended
    stream.close()
    reconnect = sse(gw, topic, token=token, headers={"Last-Event-ID": "1"})
    assert reconnect.status == 404 and "error" in reconnect.body
    reconnect.close()


def test_sse_heartbeats_and_sigterm_ends_the_stream_with_shutdown(server_factory):
    srv = server_factory(env={"HEARTBEAT_INTERVAL": 1, "SHUTDOWN_GRACE_SECONDS": 3})
    token = register(srv)
    topic = create_topic(srv, token)
    stream = sse(srv, topic, token=token)
    stream.next_event()
    assert stream.next(timeout=3) == {"comment": "ping"}
    publish(srv, token, topic, 1)
    srv.send_signal()
    items = stream.until_end()
    assert [i["event"] for i in items] == ["message", "shutdown"], items
    stream.close()
    rc = srv.wait_exit(10)
    assert rc == 0, f"exit code {rc}\n{srv.log_tail()}"
    assert token not in srv.log_text()


def test_sse_on_the_flask_dev_server_and_ctrl_c(server_factory):
    srv = server_factory(kind="flask", env={"SHUTDOWN_GRACE_SECONDS": 3})
    token = register(srv)
    topic = create_topic(srv, token)
    stream = sse(srv, topic, token=token)
    assert stream.next_event()["event"] == "subscribed"
    publish(srv, token, topic, "one")
    assert [m["id"] for m in stream.messages(1)] == [1]
    srv.send_signal(signal.SIGINT)
    assert [i["event"] for i in stream.until_end()] == ["shutdown"]
    stream.close()
    assert srv.wait_exit(10) is not None, srv.log_tail()
    assert token not in srv.log_text()


def test_sse_slow_reader_gets_a_dropped_notice_and_never_blocks_publishers(server_factory):
    srv = server_factory(env={"SUBSCRIBER_QUEUE_SIZE": 5, "HEARTBEAT_INTERVAL": 0})
    token = register(srv)
    topic = create_topic(srv, token)
    stream = sse(srv, topic, token=token)
    stream.next_event()
    blob = "x" * 16384
    started = time.monotonic()
    # 16 MB while the stream is not read: more than the kernel buffers of an unread loopback
    # connection hold (the sender's autotuned buffer stops at tcp_wmem's 4 MB by default).
    with ws_connect(srv, token) as pub:
        seqs = [pub.publish(topic, blob)["seq"] for _ in range(1000)]
    assert time.monotonic() - started < 20, "a stream that is not read slowed the publisher"
    received, dropped = [], []
    while len(received) + sum(d["count"] for d in dropped) < len(seqs):
        item = stream.next_event(timeout=10)
        if item["event"] == "dropped":
            dropped.append(item["data"])
        else:
            assert item["event"] == "message", item
            received.append(item["id"])
    assert dropped, "a stream that was not read lost nothing"
    assert received == sorted(received) and received[-1] == seqs[-1]
    lost = [s for d in dropped for s in range(d["from_seq"], d["to_seq"] + 1)]
    assert all(d["count"] == d["to_seq"] - d["from_seq"] + 1 for d in dropped), dropped
    assert sorted(received + lost) == seqs
    stream.close()


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({}, 401),
        ({"token": "not-a-token"}, 401),
        ({"headers": {"Last-Event-ID": "abc"}}, 400),
    ],
)
def test_sse_refusals(gw, token, kwargs, status):
    topic = create_topic(gw, token)
    if status != 401:
        kwargs = {**kwargs, "header_token": token}
    stream = sse(gw, topic, **kwargs)
    assert stream.status == status and "error" in stream.body
    stream.close()
    missing = sse(gw, "no-such-topic", token=token)
    assert missing.status == 404
    missing.close()
    assert stats_topic(gw, topic)["subscribers"] == 0


def test_sse_token_never_reaches_the_logs(gw, token):
    topic = create_topic(gw, token)
    stream = sse(gw, topic, token=token)
    stream.next_event()
    stream.close()
    resp = http_full("GET", f"{gw.url}/topics/{topic}/events?token=bad.{token}")
    assert resp.status == 401
    wait_until(lambda: f"topic={topic} reason=client_gone" in gw.log_text(), 5, what="sse_close")
    assert token not in gw.log_text()
