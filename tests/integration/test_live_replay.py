"""Replay with last_n and the replay/live seam (docs/protocol.md, docs/delivery.md)."""

from __future__ import annotations

import threading
import time

from harness import check_event, create_topic, read_until, ws_connect


def test_replay_last_3_then_live_without_gap_or_duplicate(gw, token):
    topic = create_topic(gw, token)
    with ws_connect(gw, token) as early, ws_connect(gw, token) as publisher:
        early.subscribe(topic)
        for i in range(1, 6):
            assert publisher.publish(topic, {"n": i}, msg_id=f"m{i}")["seq"] == i
        live = {m["seq"]: m for m in (check_event(f, topic) for f in early.events(5))}

        with ws_connect(gw, token) as late:
            late.subscribe(topic, last_n=3)
            replayed = [check_event(f, topic) for f in late.events(3)]
            # Replayed events keep their original id, payload, timestamp and seq.
            assert replayed == [live[3], live[4], live[5]]
            assert late.barrier() == []

            assert publisher.publish(topic, {"n": 6}, msg_id="m6")["seq"] == 6
            assert check_event(late.recv(), topic, seq=6)["payload"] == {"n": 6}
            assert late.barrier() + late.quiet() == [], "duplicate after the seam"


def test_subscribing_while_a_publisher_runs_has_a_clean_seam(gw, token):
    topic = create_topic(gw, token)
    stop = threading.Event()
    last_acked = [0]
    final: list[int] = []
    errors: list[BaseException] = []

    def publish_forever():
        try:
            with ws_connect(gw, token) as publisher:
                while not stop.is_set():
                    last_acked[0] = publisher.publish(topic, {"t": time.monotonic()})["seq"]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def read_until_final(client, seqs):
        def handle(frame):
            assert frame["type"] == "event", f"unexpected frame at the seam: {frame}"
            seqs.append(check_event(frame, topic)["seq"])

        try:
            with client:
                read_until(
                    client.recv, handle, lambda: bool(final and seqs) and seqs[-1] >= final[0]
                )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    publisher = threading.Thread(target=publish_forever, daemon=True)
    publisher.start()
    subscribers = []
    try:
        for _ in range(5):
            before = last_acked[0]
            deadline = time.monotonic() + 5
            while last_acked[0] < before + 20 and time.monotonic() < deadline and not errors:
                time.sleep(0.005)
            floor = last_acked[0]
            client = ws_connect(gw, token)
            client.subscribe(topic, last_n=5)
            seqs: list[int] = []
            reader = threading.Thread(target=read_until_final, args=(client, seqs), daemon=True)
            reader.start()
            subscribers.append((reader, floor, seqs))
        time.sleep(0.3)
    finally:
        stop.set()
        publisher.join(10)
    final.append(last_acked[0])
    for reader, _, _ in subscribers:
        reader.join(15)
    assert not errors, errors
    assert final[0] > 100, f"publisher made too little progress ({final[0]}) to test a seam"

    for reader, floor, seqs in subscribers:
        assert not reader.is_alive(), "a subscriber never reached the last published seq"
        first = seqs[0]
        assert first >= floor - 4, f"replay started at {first}, before the last 5 at subscribe"
        assert seqs == list(range(first, final[0] + 1)), (
            f"gap or duplicate at the seam: first={first} "
            f"missing={sorted(set(range(first, final[0] + 1)) - set(seqs))[:10]} "
            f"dupes={[s for s in set(seqs) if seqs.count(s) > 1][:10]}"
        )
