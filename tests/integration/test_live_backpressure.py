"""Slow and stalled consumers (docs/delivery.md): drop-oldest with notices, whole frames on the
wire, and a never-reading socket cut off without hurting anyone else."""

from __future__ import annotations

import threading
import time

from harness import (
    RawClosed,
    RawWS,
    check_event,
    create_topic,
    read_until,
    register,
    stats_topic,
    wait_until,
    ws_connect,
)


def account_for_drops(
    frames: list[dict], topic: str, first_seq: int, last_seq: int
) -> tuple[int, int]:
    """Check seq order and drop notices of one reader; return (events received, dropped total)."""
    received = dropped = pending = 0
    expected = first_seq
    for f in frames:
        if f["type"] == "info" and f.get("msg") == "dropped":
            assert f["topic"] == topic and isinstance(f["count"], int) and f["count"] > 0, f
            pending += f["count"]
            dropped += f["count"]
        elif f["type"] == "event":
            seq = check_event(f, topic)["seq"]
            assert seq >= expected, f"seq went backwards or repeated: {seq} after {expected - 1}"
            assert seq == expected + pending, (
                f"docs/delivery.md: events {expected}..{seq - 1} were lost but the dropped notices before seq "
                f"{seq} only account for {pending}"
            )
            received += 1
            expected, pending = seq + 1, 0
        else:
            assert f["type"] == "info" and f.get("msg") == "ping", f"unexpected frame {f}"
    assert expected - 1 == last_seq and pending == 0, (expected, pending, last_seq)
    assert received + dropped == last_seq - first_seq + 1, (received, dropped)
    return received, dropped


def test_paused_readers_get_whole_frames_and_exact_drop_counts(server_factory):
    srv = server_factory(env={"SUBSCRIBER_QUEUE_SIZE": 20, "WRITE_TIMEOUT_SECONDS": 6})
    token = register(srv)
    topic = create_topic(srv, token)
    # The server's kernel send buffer alone absorbs ~4 MB per socket on loopback, so each wave
    # (300 x 16 KB) must exceed that for a paused reader's queue to overflow.
    payload = "p" * 16384
    waves, per_wave = 3, 300

    readers = []
    for i in range(8):
        raw = RawWS(srv.port, token, rcvbuf=8192)
        raw.send_json({"type": "subscribe", "topic": topic, "request_id": f"s{i}"})
        ack = raw.recv_json()
        assert ack["type"] == "ack" and ack["request_id"] == f"s{i}", ack
        readers.append(raw)

    final: list[int] = []
    results: dict[int, list[dict]] = {i: [] for i in range(len(readers))}
    errors: list[BaseException] = []

    def read(i: int, raw: RawWS) -> None:
        pause = 0.6 + 0.2 * i  # 0.6 .. 2.0 s, always below WRITE_TIMEOUT_SECONDS
        frames = results[i]
        last_seq = [0]

        def handle(frame):
            frames.append(frame)
            if frame["type"] == "event":
                last_seq[0] = frame["message"]["seq"]
            if len(frames) % per_wave == 0 and len(frames) <= 2 * per_wave:
                time.sleep(pause)

        try:
            time.sleep(pause)
            read_until(raw.recv_json, handle, lambda: bool(final) and last_seq[0] >= final[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            raw.close()

    threads = [
        threading.Thread(target=read, args=(i, r), daemon=True) for i, r in enumerate(readers)
    ]
    for t in threads:
        t.start()
    with ws_connect(srv, token) as pub:
        for wave in range(waves):
            for _ in range(per_wave):
                last = pub.publish(topic, payload)["seq"]
            if wave < waves - 1:
                time.sleep(0.7)
    final.append(last)
    assert last == waves * per_wave
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a paused reader never got the last event"
    assert not errors, errors

    total_dropped = 0
    for frames in results.values():
        _, dropped = account_for_drops(frames, topic, 1, last)
        total_dropped += dropped
    assert total_dropped > 0, "test did not fill the queues; raise the volume"


def test_never_reading_subscriber_is_cut_off_while_others_get_everything(server_factory):
    write_timeout = 2
    srv = server_factory(env={"SUBSCRIBER_QUEUE_SIZE": 50, "WRITE_TIMEOUT_SECONDS": write_timeout})
    token = register(srv)
    topic = create_topic(srv, token)

    stalled = RawWS(srv.port, token, rcvbuf=4096)
    stalled.send_json({"type": "subscribe", "topic": topic})
    wait_until(lambda: stats_topic(srv, topic)["subscribers"] == 1, 5, what="stalled subscription")

    readers = [ws_connect(srv, token) for _ in range(3)]
    for r in readers:
        r.subscribe(topic)
    final: list[int] = []
    results: list[list[dict]] = [[] for _ in readers]
    errors: list[BaseException] = []

    def read(client, frames):
        def done():
            return (
                bool(final and frames) and frames[-1].get("message", {}).get("seq", 0) >= final[0]
            )

        try:
            read_until(client.recv, frames.append, done)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=read, args=(c, f), daemon=True)
        for c, f in zip(readers, results, strict=True)
    ]
    for t in threads:
        t.start()

    # The stalled socket stops taking bytes once the server's kernel send buffer is full
    # (autotuned up to tcp_wmem's max, ~4 MB on loopback) and its outbox then waits with a
    # no-progress deadline of write_timeout. How many events fit in that time depends on the
    # machine's speed (a fast one publishes thousands of 8 KB events in under 2 s), so publish
    # until the cut-off shows in /stats, or fail once a deadline far past write_timeout passes.
    # The first `fill` events (8 MB) go at full speed to fill the buffers; then the publisher
    # slows down, which bounds the volume if the gateway never cuts the socket off.
    payload = "q" * 8192
    fill = 1000
    cut_after: float | None = None
    with ws_connect(srv, token) as pub:
        started = time.monotonic()
        deadline = started + write_timeout + 30
        seq = 0
        while time.monotonic() < deadline and not errors:
            for _ in range(25):
                seq = pub.publish(topic, payload)["seq"]
            if stats_topic(srv, topic)["subscribers"] == 3:
                cut_after = time.monotonic() - started
                break
            if seq >= fill:
                time.sleep(0.05)
    final.append(seq)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert cut_after is not None, (
        f"never-reading subscriber still subscribed {time.monotonic() - started:.1f}s after "
        f"publishing began ({seq} events of 8 KB, WRITE_TIMEOUT_SECONDS={write_timeout})\n"
        f"{srv.log_tail()}"
    )
    # The socket took bytes when the first events went out, so the no-progress deadline
    # cannot have run out before write_timeout had passed since then.
    assert cut_after >= write_timeout, f"cut off after {cut_after:.2f}s, before the write timeout"
    # ... and it was the outbox's write timeout that cut it off (docs/delivery.md), nothing else.
    slow = [line for line in srv.log_text().splitlines() if "slow_consumer conn=" in line]
    assert len(slow) == 1 and "write_timeout=" in slow[0], srv.log_tail()

    for frames in results:
        seqs = [check_event(f, topic)["seq"] for f in frames]
        assert seqs == list(range(1, seq + 1)), (
            f"a healthy reader lost or reordered events: {len(seqs)} of {seq}; "
            f"non-events: {[f for f in frames if f['type'] != 'event'][:3]}"
        )
    for r in readers:
        r.ping()
        r.close()

    # The server closed the stalled socket: draining it ends in a close frame, EOF or a reset.
    code: int | str | None = "still open"
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            stalled.recv_message(timeout=5)
    except RawClosed as closed:
        code = closed.code
    except ConnectionResetError:
        code = None
    except TimeoutError:
        pass
    finally:
        stalled.close()
    assert code != "still open", "server kept the stalled socket open"
    assert code in (None, 4008), f"slow consumer closed with {code}, the docs/delivery.md says 4008"
