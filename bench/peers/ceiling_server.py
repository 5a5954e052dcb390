"""Ceiling peer: Flask + flask-sock + gevent under gunicorn, fan-out with nothing else.

On publish it encodes the event once, frames it once, and `sendall`s the same bytes to every
subscriber socket from the publisher's greenlet. No auth, no queues, no backpressure, no replay,
no ordering guarantee between concurrent publishers: it shows what the stack itself can do.
It speaks the gateway's JSON subset (subscribe, unsubscribe, publish, ping; ack, event, pong,
info/ping), so `loadgen.py --protocol ceiling` drives it with the gateway code path.

Run:  PORT=8101 gunicorn -c bench/peers/gunicorn_peer.conf.py --chdir bench/peers ceiling_server:app
Env:  HEARTBEAT_INTERVAL (s, 0 = off, default 0), GC_TUNE (1 = gc.freeze + high threshold, default 1)
Caveat: a subscriber whose kernel buffer is full stalls the publisher's loop (that is the point:
nothing else), and a pong written concurrently with a blocked fan-out could interleave.
"""

from __future__ import annotations

import gc
import os
import time

import gevent
import orjson
from flask import Flask
from flask_sock import ConnectionClosed, Sock

dumps = orjson.dumps


def ws_frame(payload: bytes) -> bytes:
    """Frame payload as one unmasked server-to-client text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def reply(sock, frame: dict) -> None:
    sock.sendall(ws_frame(dumps(frame)))


class Topic:
    __slots__ = ("socks", "seq")

    def __init__(self) -> None:
        self.socks: set = set()
        self.seq = 0


def create_app() -> Flask:
    """Build the ceiling app; state lives in this closure."""
    app = Flask(__name__)
    sock = Sock(app)
    topics: dict[str, Topic] = {}
    conns: set = set()
    heartbeat = int(os.environ.get("HEARTBEAT_INTERVAL", "0"))
    started = []

    def heartbeats() -> None:
        while True:
            gevent.sleep(heartbeat)
            frame = ws_frame(b'{"type":"info","msg":"ping"}')
            for s in list(conns):
                try:
                    s.sendall(frame)
                except OSError:
                    conns.discard(s)

    @app.get("/health")
    def health():
        return {"topics": len(topics), "subscribers": sum(len(t.socks) for t in topics.values())}

    @sock.route("/ws")
    def ws(ws):
        if heartbeat and not started:
            started.append(gevent.spawn(heartbeats))
        raw = ws.sock
        conns.add(raw)
        mine: set[str] = set()
        try:
            while True:
                msg = orjson.loads(ws.receive())
                typ = msg.get("type")
                rid = msg.get("request_id")
                name = msg.get("topic")
                if typ == "publish":
                    topic = topics.get(name) or topics.setdefault(name, Topic())
                    topic.seq += 1
                    event = dict(msg["message"], topic=name, seq=topic.seq)
                    frame = ws_frame(dumps({"type": "event", "topic": name, "message": event}))
                    for s in list(topic.socks):
                        try:
                            s.sendall(frame)
                        except OSError:
                            topic.socks.discard(s)
                    reply(
                        raw,
                        {
                            "type": "ack",
                            "request_id": rid,
                            "topic": name,
                            "status": "ok",
                            "seq": topic.seq,
                        },
                    )
                elif typ == "subscribe":
                    (topics.get(name) or topics.setdefault(name, Topic())).socks.add(raw)
                    mine.add(name)
                    reply(raw, {"type": "ack", "request_id": rid, "topic": name, "status": "ok"})
                elif typ == "unsubscribe":
                    if name in topics:
                        topics[name].socks.discard(raw)
                    mine.discard(name)
                    reply(raw, {"type": "ack", "request_id": rid, "topic": name, "status": "ok"})
                elif typ == "ping":
                    reply(raw, {"type": "pong", "request_id": rid, "ts": time.time()})
                else:
                    reply(
                        raw, {"type": "error", "request_id": rid, "error": {"code": "BAD_REQUEST"}}
                    )
        except (ConnectionClosed, OSError):
            pass
        finally:
            conns.discard(raw)
            for name in mine:
                if name in topics:
                    topics[name].socks.discard(raw)

    return app


app = create_app()
if os.environ.get("GC_TUNE", "1") == "1":
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
