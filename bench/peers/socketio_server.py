"""Socket.IO peer: Flask-SocketIO in gevent async mode under gunicorn's gevent worker.

Rooms are topics. Event 'subscribe' {"topic"} joins the room and acks {"status":"ok"};
event 'publish' {"topic","message"} emits 'event' to the room (encoded once by python-socketio)
and acks {"status":"ok","seq"}. The 'event' payload has the gateway's event shape
({"type":"event","topic","message":{...,"seq"}}) so loadgen measures both the same way.
WebSocket transport is python-engineio's simple-websocket path (no gevent-websocket).

Run:  PORT=8102 gunicorn -c bench/peers/gunicorn_peer.conf.py --chdir bench/peers socketio_server:app
Env:  PING_INTERVAL (engine.io heartbeat, s, default 25), GC_TUNE (default 1, as the ceiling)
"""

from __future__ import annotations

import gc
import os

from flask import Flask
from flask_socketio import SocketIO, join_room, leave_room

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="gevent",
    ping_interval=int(os.environ.get("PING_INTERVAL", "25")),
    ping_timeout=20,
    cors_allowed_origins="*",
)
seqs: dict[str, int] = {}


@socketio.on("subscribe")
def subscribe(data):
    join_room(data["topic"])
    return {"status": "ok", "topic": data["topic"]}


@socketio.on("unsubscribe")
def unsubscribe(data):
    leave_room(data["topic"])
    return {"status": "ok", "topic": data["topic"]}


@socketio.on("publish")
def publish(data):
    topic = data["topic"]
    seq = seqs[topic] = seqs.get(topic, 0) + 1
    message = dict(data["message"], topic=topic, seq=seq)
    socketio.emit("event", {"type": "event", "topic": topic, "message": message}, to=topic)
    return {"status": "ok", "seq": seq}


if os.environ.get("GC_TUNE", "1") == "1":
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
