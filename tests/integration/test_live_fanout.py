"""Fan-out, isolation and order with concurrent publishers; counts in /health, /stats, /topics
(docs/delivery.md)."""

from __future__ import annotations

import threading

from harness import check_event, create_topic, http, register, wait_until, ws_connect

PER_PUBLISHER = 60  # per topic


def test_concurrent_publishers_reach_every_subscriber_once_in_order(server_factory):
    srv = server_factory()
    token = register(srv)
    t1, t2 = create_topic(srv, token), create_topic(srv, token)
    plan = {"s0": [t1], "s1": [t1], "s2": [t2], "s3": [t1, t2]}
    clients = {name: ws_connect(srv, token) for name in plan}
    for name, topics in plan.items():
        for topic in topics:
            clients[name].subscribe(topic)

    status, health = http("GET", srv.url + "/health")
    assert status == 200 and (health["topics"], health["subscribers"]) == (2, 5), health
    assert isinstance(health["uptime_sec"], int), health
    status, stats = http("GET", srv.url + "/stats")
    assert {
        t: (stats["topics"][t]["messages"], stats["topics"][t]["subscribers"]) for t in (t1, t2)
    } == {t1: (0, 3), t2: (0, 2)}, stats
    status, listing = http("GET", srv.url + "/topics", token=token)
    assert sorted((t["name"], t["subscribers"]) for t in listing["topics"]) == sorted(
        [(t1, 3), (t2, 2)]
    ), listing

    total = 3 * PER_PUBLISHER
    errors: list[BaseException] = []
    sent_ids: dict[str, set[str]] = {t1: set(), t2: set()}
    lock = threading.Lock()

    def publish(p: int):
        try:
            with ws_connect(srv, token) as pub:
                for i in range(PER_PUBLISHER):
                    for topic in (t1, t2):
                        msg_id = f"p{p}-{i}-{topic}"
                        pub.publish(topic, {"p": p, "i": i}, msg_id=msg_id)
                        with lock:
                            sent_ids[topic].add(msg_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    received: dict[str, list[dict]] = {name: [] for name in plan}

    def consume(name: str):
        try:
            expected = total * len(plan[name])
            while len(received[name]) < expected:
                frame = clients[name].recv(timeout=15)
                received[name].append(frame)
            received[name].extend(clients[name].barrier())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(n,), daemon=True) for n in plan]
    threads += [threading.Thread(target=publish, args=(p,), daemon=True) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "fan-out did not finish within 60 s"
    assert not errors, errors

    for name, topics in plan.items():
        frames = received[name]
        assert all(f["type"] == "event" for f in frames), [
            f for f in frames if f["type"] != "event"
        ][:3]
        for topic in (t1, t2):
            msgs = [check_event(f, topic) for f in frames if f["topic"] == topic]
            if topic not in topics:
                assert msgs == [], f"{name} got events of {topic} it never subscribed to"
                continue
            assert [m["seq"] for m in msgs] == list(range(1, total + 1)), f"{name}/{topic} order"
            ids = [m["id"] for m in msgs]
            assert len(set(ids)) == len(ids) and set(ids) == sent_ids[topic], f"{name}/{topic} ids"

    status, stats = http("GET", srv.url + "/stats")
    assert stats["topics"][t1]["messages"] == total and stats["topics"][t2]["messages"] == total

    for client in clients.values():
        client.close()

    def all_gone():
        _, h = http("GET", srv.url + "/health")
        _, s = http("GET", srv.url + "/stats")
        _, listing = http("GET", srv.url + "/topics", token=token)
        return (
            h["subscribers"] == 0
            and all(s["topics"][t]["subscribers"] == 0 for t in (t1, t2))
            and all(t["subscribers"] == 0 for t in listing["topics"])
        ) and (h, s)

    health, stats = wait_until(all_gone, timeout=5, what="subscriber counts to drop to 0")
    assert health["topics"] == 2
