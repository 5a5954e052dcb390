"""The per-connection outbox: whole frames, drop-oldest with notices, slow consumers (docs/delivery.md)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from wire_reader import WireReader
from wsproto.frame_protocol import Opcode

from gateway.transport import wsframes
from gateway.transport.outbox import Outbox


def event_frame(topic: str, seq: int, size: int = 0) -> bytes:
    return wsframes.text(
        f'{{"type":"event","topic":"{topic}","message":{{"seq":{seq},"pad":"{"x" * size}"}}}}'.encode()
    )


def control(n: int) -> bytes:
    return wsframes.text(f'{{"type":"pong","request_id":"{n}"}}'.encode())


@pytest.fixture
def pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield server, client
    server.close()
    client.close()


# Larger than loopback's kernel buffers on both ends: the writer blocks inside this frame
# until the test starts reading.
STUCK = 32 * 1024 * 1024


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_frames_arrive_whole_and_in_push_order(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=100, write_timeout=5)
    outbox.push(control(0))
    for seq in range(1, 51):
        outbox.push_event("t", seq, event_frame("t", seq, size=300))
    outbox.push(control(1))
    reader = WireReader(client)
    reader.read_until(lambda frames: len(frames) == 52)
    bodies = reader.texts()
    assert bodies[0]["type"] == "pong" and bodies[-1]["type"] == "pong"
    assert [b["message"]["seq"] for b in bodies[1:-1]] == list(range(1, 51))
    outbox.finish(2)


def test_full_queue_drops_oldest_events_and_says_so(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=3, write_timeout=10)
    outbox.push_event("t", 1, event_frame("t", 1, size=STUCK))  # the writer blocks on this one
    wait_for(lambda: outbox.pending() == 0)
    for seq in range(2, 12):
        outbox.push_event("t", seq, event_frame("t", seq))
    outbox.push(control(99))  # control frames are never dropped
    assert outbox.pending() == 4
    reader = WireReader(client)
    reader.read_until(lambda frames: len(frames) == 6)
    bodies = reader.texts()
    assert bodies[0]["message"]["seq"] == 1
    assert bodies[1] == {
        **bodies[1],
        "type": "info",
        "msg": "dropped",
        "topic": "t",
        "count": 7,
        "from_seq": 2,
        "to_seq": 8,
    }
    assert [b["message"]["seq"] for b in bodies[2:5]] == [9, 10, 11]
    assert bodies[5]["request_id"] == "99"
    outbox.finish(2)


def test_drop_counts_are_per_topic_and_flushed_when_the_queue_drains(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=2, write_timeout=10)
    outbox.push_event("a", 1, event_frame("a", 1, size=STUCK))
    wait_for(lambda: outbox.pending() == 0)
    outbox.push_event("b", 1, event_frame("b", 1))
    outbox.push_event("a", 2, event_frame("a", 2))
    outbox.push_event("a", 3, event_frame("a", 3))  # drops b:1
    reader = WireReader(client)
    reader.read_until(lambda frames: len(frames) == 4)
    bodies = reader.texts()
    assert [b.get("msg") or b["message"]["seq"] for b in bodies] == [1, 2, 3, "dropped"]
    assert (bodies[3]["topic"], bodies[3]["count"]) == ("b", 1)
    assert (bodies[3]["from_seq"], bodies[3]["to_seq"]) == (1, 1)
    outbox.finish(2)


def test_close_sends_notice_then_close_frame_and_refuses_more(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=10, write_timeout=5)
    outbox.push_event("t", 1, event_frame("t", 1))
    outbox.close(1001, "server shutdown", wsframes.text(b'{"type":"info","msg":"shutdown"}'))
    outbox.push_event("t", 2, event_frame("t", 2))
    outbox.push(control(1))
    reader = WireReader(client)
    reader.read_until(lambda frames: reader.close_code() is not None)
    assert [op for op, _ in reader.frames] == [Opcode.TEXT, Opcode.TEXT, Opcode.CLOSE]
    assert reader.texts()[1]["msg"] == "shutdown"
    assert reader.close_code() == 1001
    assert not outbox.is_open
    outbox.peer_closed()
    outbox.finish(2)


def test_slow_consumer_is_cut_and_publishers_never_wait(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=5, write_timeout=1)
    for seq in (1, 2):
        outbox.push_event("t", seq, event_frame("t", seq))
    outbox.push_event("t", 3, event_frame("t", 3, size=STUCK))
    wait_for(lambda: outbox.pending() == 0)
    for seq in range(4, 2000):
        outbox.push_event("t", seq, event_frame("t", seq, size=100))
    # Two thousand events for a stuck socket neither blocked the caller nor grew the queue.
    assert outbox.pending() <= 5
    wait_for(lambda: not outbox.is_open, timeout=5)
    reader = WireReader(client)
    reader.read_until(lambda frames: False, timeout=10)  # reads to EOF: the socket was cut
    bodies = reader.texts()
    events = [b["message"]["seq"] for b in bodies if b["type"] == "event"]
    assert events in ([1, 2], [1, 2, 3])  # whole frames only, never a cut one
    if reader.close_code() is not None:  # the goodbye is best effort: if it got out, it is exact
        assert reader.close_code() == 4008
        assert bodies[-1]["error"]["code"] == "SLOW_CONSUMER"
    outbox.finish(2)


def test_library_frames_share_the_single_writer(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=10, write_timeout=5)
    outbox.push_event("t", 1, event_frame("t", 1))
    outbox.push_raw(b"\x8a\x00")  # an unmasked pong from the WebSocket library
    outbox.push(control(1))
    reader = WireReader(client)
    reader.read_until(lambda frames: len(frames) == 3)
    assert [op for op, _ in reader.frames] == [Opcode.TEXT, Opcode.PONG, Opcode.TEXT]
    outbox.finish(2)


def test_finish_flushes_what_is_queued(pair):
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=1000, write_timeout=5)
    for seq in range(1, 301):
        outbox.push_event("t", seq, event_frame("t", seq, size=1000))
    finisher = threading.Thread(target=outbox.finish, args=(5,))
    finisher.start()
    reader = WireReader(client)
    reader.read_until(lambda frames: len(frames) == 300)
    assert [b["message"]["seq"] for b in reader.texts()] == list(range(1, 301))
    finisher.join(5)


def test_nothing_follows_the_close_reply_on_the_wire(pair):
    # A heartbeat queued after the client's close was answered once went out after it.
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=10, write_timeout=5)
    outbox.push(control(1))
    outbox.push_raw(wsframes.close(1000), closing=True)
    outbox.push(control(2))
    outbox.push_event("t", 1, event_frame("t", 1))
    outbox.push_raw(b"\x89\x00")  # a pong the library would answer with
    outbox.finish(2)
    server.shutdown(socket.SHUT_WR)
    client.settimeout(5)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    assert data == control(1) + wsframes.close(1000)  # the close reply is the last frame


def test_pongs_count_against_the_unread_replies_bound(pair):
    # A client that pings and never reads: its pongs pile up behind a stuck writer until
    # the bound closes it, like unread acks (they once queued without limit).
    server, client = pair
    outbox = Outbox(server, "c1", queue_size=1, write_timeout=5)
    outbox.push(wsframes.text(b"x" * STUCK))
    wait_for(lambda: outbox._writer is not None)
    for _ in range(5000):
        outbox.push_raw(b"\x8a\x00")
    assert not outbox.is_open
    assert outbox.pending() <= 1003  # the stuck frame, 1000 pongs, the error, the close
    outbox.abort()
