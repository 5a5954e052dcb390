"""Scale-out on Redis (docs/operations.md "Scale-out with Redis"): two gunicorn gateways with two gevent workers each, one Redis,
one PostgreSQL database, acting as one gateway (docs/operations.md "Scale-out with Redis").

A WebSocket lands on either worker of its gateway, so every test here crosses processes:
gateway A's workers and gateway B's workers only meet through Redis and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from cluster import postgres_database, running_cluster
from harness import (
    PASSWORD,
    check_event,
    create_topic,
    http,
    register,
    stats_topic,
    unique,
    wait_until,
    ws_connect,
)

PUBLISHERS = 4
PER_PUBLISHER = 200
TOTAL = PUBLISHERS * PER_PUBLISHER


@pytest.fixture(scope="module")
def pg_url():
    """A PostgreSQL database of this module's own, dropped at the end."""
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_url):
    """Gateways A and B (WEB_CONCURRENCY=2 each) on one Redis and one user database."""
    # A large queue: these tests are about order across workers, not about backpressure.
    with running_cluster(
        tmp_path_factory.mktemp("scaleout"), pg_url, SUBSCRIBER_QUEUE_SIZE="2000"
    ) as c:
        yield c


@pytest.fixture(scope="module")
def token(cluster):
    return register(cluster.a)


def subscribers(listing: dict) -> dict[str, int]:
    """GET /topics as {name: subscribers}."""
    return {t["name"]: t["subscribers"] for t in listing["topics"]}


def _health(srv) -> dict:
    status, body = http("GET", srv.url + "/health")
    assert status == 200, (status, body)
    return body


def _wait_stats(srv, topic: str, expected: dict, timeout: float = 10.0) -> None:
    seen = []

    def matches() -> bool:
        seen.append(stats_topic(srv, topic))
        return seen[-1] == expected

    try:
        wait_until(matches, timeout, interval=0.1, what=f"/stats {topic} = {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; /stats on port {srv.port} last showed {seen[-1]}") from None


def _workers_booted(srv) -> int:
    return srv.log_text().count("Booting worker")


# ---------------------------------------------------------------------------------------------
# 1. Accounts


def test_account_registered_on_a_logs_in_on_b(cluster):
    a, b = cluster.a, cluster.b
    name = unique("u")
    creds = {"username": name, "password": PASSWORD}
    status, reg = http("POST", a.url + "/users/register", creds)
    assert status == 201 and reg["user"]["username"] == name, (status, reg)

    status, login = http("POST", b.url + "/users/login", creds)
    assert status == 200, (status, login, cluster.logs())
    assert login["status"] == "logged_in" and login["user"] == reg["user"], login

    # Several requests, so both workers of each gateway are likely to answer one.
    for _ in range(4):
        status, profile = http("GET", b.url + "/users/profile", token=reg["token"])
        assert status == 200 and profile["user"] == reg["user"], (status, profile)
        status, profile = http("GET", a.url + "/users/profile", token=login["token"])
        assert status == 200 and profile["user"] == reg["user"], (status, profile)

    status, body = http("POST", b.url + "/users/register", creds)
    assert status == 409 and isinstance(body.get("error"), str), (status, body)
    status, body = http("POST", b.url + "/users/login", {"username": name, "password": "x" * 12})
    assert status == 401 and isinstance(body.get("error"), str), (status, body)


# ---------------------------------------------------------------------------------------------
# 2. Topics


def test_topics_are_cluster_wide_and_created_exactly_once(cluster, token):
    a, b = cluster.a, cluster.b
    topic = create_topic(a, token)
    status, listing = http("GET", b.url + "/topics", token=token)
    assert status == 200 and subscribers(listing).get(topic) == 0, listing
    assert stats_topic(b, topic) == {"messages": 0, "subscribers": 0}

    race = unique("race")
    n = 20
    barrier = threading.Barrier(n, timeout=10)
    results: list = [None] * n

    def create(i: int) -> None:
        srv = (a, b)[i % 2]
        try:
            barrier.wait()
            results[i] = http("POST", srv.url + "/topics", {"name": race}, token=token, timeout=15)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            results[i] = exc

    threads = [threading.Thread(target=create, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "concurrent creates did not finish in 30 s"
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * (n - 1), (statuses, results)
    for status, body in results:
        if status == 201:
            assert body["status"] == "created" and body["topic"] == race, body
        else:
            assert isinstance(body.get("error"), str), body
    for srv in (a, b):
        status, listing = http("GET", srv.url + "/topics", token=token)
        assert [t["name"] for t in listing["topics"]].count(race) == 1, listing


# ---------------------------------------------------------------------------------------------
# 3. Fan-out across instances and workers


def test_concurrent_publishes_on_b_reach_subscribers_on_both_in_seq_order(cluster, token):
    a, b = cluster.a, cluster.b
    topic = create_topic(a, token)
    names = ["A0", "A1", "B0", "B1"]
    with contextlib.ExitStack() as stack:
        subs = {}
        for name in names:
            srv = a if name.startswith("A") else b
            subs[name] = stack.enter_context(ws_connect(srv, token))
            subs[name].subscribe(topic)
        for srv in (a, b):
            _wait_stats(srv, topic, {"messages": 0, "subscribers": len(names)})

        errors: list[BaseException] = []
        acks: list[tuple[int, str]] = []
        acks_by_publisher: dict[int, list[int]] = {}
        received: dict[str, list[dict]] = {name: [] for name in names}
        lock = threading.Lock()

        def publish(p: int) -> None:
            try:
                with ws_connect(b, token) as pub:
                    mine = acks_by_publisher.setdefault(p, [])
                    for i in range(PER_PUBLISHER):
                        msg_id = f"p{p}-{i}"
                        seq = pub.publish(topic, {"p": p, "i": i}, msg_id=msg_id)["seq"]
                        mine.append(seq)
                        with lock:
                            acks.append((seq, msg_id))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        def consume(name: str) -> None:
            try:
                frames = received[name]
                while not any(
                    f.get("type") == "event" and f["message"]["seq"] == TOTAL for f in frames[-1:]
                ):
                    frames.append(subs[name].recv(timeout=15))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=consume, args=(n,), daemon=True) for n in names]
        threads += [
            threading.Thread(target=publish, args=(p,), daemon=True) for p in range(PUBLISHERS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "fan-out did not finish within 60 s"
        assert not errors, (errors, cluster.logs())

        # Every publish got its own seq, and together they are exactly 1..TOTAL.
        seqs = [seq for seq, _ in acks]
        assert len(seqs) == TOTAL and set(seqs) == set(range(1, TOTAL + 1)), sorted(seqs)[:20]
        for p, mine in acks_by_publisher.items():
            assert mine == sorted(mine), f"publisher {p} got decreasing seqs"
        id_by_seq = dict(acks)

        for name in names:
            frames = received[name]
            others = [f for f in frames if f["type"] != "event"]
            assert not others, (name, others[:5])
            got = [check_event(f, topic)["seq"] for f in frames]
            assert got == list(range(1, TOTAL + 1)), (
                f"{name}: first gap/duplicate/reorder at index "
                f"{next(i for i, s in enumerate(got) if s != i + 1)}: {got[:5]}..."
            )
            wrong = [f for f in frames if f["message"]["id"] != id_by_seq[f["message"]["seq"]]]
            assert not wrong, (name, wrong[:3])
            assert subs[name].barrier() == [], name

        for srv in (a, b):
            _wait_stats(srv, topic, {"messages": TOTAL, "subscribers": len(names)})


def test_pipelined_publishes_on_both_gateways_keep_each_publishers_order(cluster, token):
    """Publishes sent without waiting reach Redis in batches (docs/performance.md): each
    publisher's acks come back in its order with rising seqs, and every subscriber sees
    every event once, each publisher's in the order it sent them."""
    a, b = cluster.a, cluster.b
    topic = create_topic(a, token)
    with contextlib.ExitStack() as stack:
        subs = [stack.enter_context(ws_connect(srv, token)) for srv in (a, b)]
        pubs = [stack.enter_context(ws_connect(srv, token)) for srv in (a, a, b, b)]
        for sub in subs:
            sub.subscribe(topic)
        for srv in (a, b):
            _wait_stats(srv, topic, {"messages": 0, "subscribers": len(subs)})
        for i in range(PER_PUBLISHER):
            for p, pub in enumerate(pubs):
                pub.send(
                    {
                        "type": "publish",
                        "topic": topic,
                        "request_id": f"{p}-{i}",
                        "message": {"id": f"p{p}-{i}", "payload": {"p": p, "i": i}},
                    }
                )
        seq_of: dict[str, int] = {}
        for p, pub in enumerate(pubs):
            replies = [pub.recv(timeout=15) for _ in range(PER_PUBLISHER)]
            assert [r["request_id"] for r in replies] == [f"{p}-{i}" for i in range(PER_PUBLISHER)]
            assert all(r["type"] == "ack" for r in replies), [r for r in replies if "error" in r]
            seqs = [r["seq"] for r in replies]
            assert seqs == sorted(seqs) and len(set(seqs)) == PER_PUBLISHER, seqs[:10]
            seq_of.update({f"p{p}-{i}": seq for i, seq in enumerate(seqs)})
        total = len(pubs) * PER_PUBLISHER
        assert sorted(seq_of.values()) == list(range(1, total + 1))
        for sub in subs:
            events = [check_event(f, topic) for f in sub.events(total, timeout=30)]
            assert [e["seq"] for e in events] == list(range(1, total + 1))
            assert all(seq_of[e["id"]] == e["seq"] for e in events)
            for p in range(len(pubs)):
                mine = [e["payload"]["i"] for e in events if e["payload"]["p"] == p]
                assert mine == list(range(PER_PUBLISHER)), p
            assert sub.quiet(0.3) == []


# ---------------------------------------------------------------------------------------------
# 4. Replay across workers


def test_replay_on_a_of_messages_published_on_b(cluster, token):
    a, b = cluster.a, cluster.b
    topic = create_topic(b, token)
    with ws_connect(b, token) as pub, ws_connect(a, token) as sub, ws_connect(a, token) as all_:
        for i in range(1, 11):
            assert pub.publish(topic, {"i": i}, msg_id=f"m{i}")["seq"] == i
        sub.subscribe(topic, last_n=5)
        for seq, frame in zip(range(6, 11), sub.events(5), strict=True):
            msg = check_event(frame, topic, seq)
            assert msg["id"] == f"m{seq}" and msg["payload"] == {"i": seq}, frame
        all_.subscribe(topic, last_n=50)  # more than the history: all of it
        assert [check_event(f, topic)["seq"] for f in all_.events(10)] == list(range(1, 11))

        for i in range(11, 14):
            assert pub.publish(topic, {"i": i}, msg_id=f"m{i}")["seq"] == i
        for client in (sub, all_):
            live = [check_event(f, topic)["seq"] for f in client.events(3)]
            assert live == [11, 12, 13], live

        # The seam while B keeps publishing: replay then live, no gap and no duplicate.
        more = 150
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                for i in range(14, 14 + more):
                    pub.publish(topic, {"i": i}, msg_id=f"m{i}")
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        worker = threading.Thread(target=publish, daemon=True)
        worker.start()
        with ws_connect(a, token) as seam:
            wait_until(
                lambda: (stats_topic(a, topic) or {}).get("messages", 0) >= 40,
                10,
                what="some publishes before subscribing",
            )
            seam.subscribe(topic, last_n=5)
            last = 13 + more
            got: list[int] = []
            while not got or got[-1] < last:
                got.append(check_event(seam.recv(timeout=15), topic)["seq"])
            worker.join(30)
            assert not worker.is_alive() and not errors, errors
            assert got == list(range(got[0], last + 1)), got
            # Subscribed once seq 40 was taken: the 5 replayed start at 36 or later.
            assert got[0] >= 36, got
            assert seam.barrier() == []


# ---------------------------------------------------------------------------------------------
# 5. Deletion across instances


def test_delete_on_b_tells_subscribers_on_a(cluster, token):
    a, b = cluster.a, cluster.b
    topic = create_topic(a, token)
    with (
        ws_connect(a, token) as s1,
        ws_connect(a, token) as s2,
        ws_connect(b, token) as s3,
        ws_connect(a, token) as pub,
    ):
        for client in (s1, s2, s3):
            client.subscribe(topic)
        assert pub.publish(topic, "before", msg_id="before")["seq"] == 1
        for client in (s1, s2, s3):
            check_event(client.recv(), topic, seq=1)

        status, body = http("DELETE", f"{b.url}/topics/{topic}", token=token)
        assert status == 200 and body == {"status": "deleted", "topic": topic}, (status, body)
        for client in (s1, s2, s3):
            info = client.recv(timeout=10)
            assert info["type"] == "info" and info["msg"] == "topic_deleted", info
            assert info["topic"] == topic, info
            client.ping()  # the socket stays open
            assert client.barrier() == []

        reply = pub.call({"type": "publish", "topic": topic, "message": {"id": "x", "payload": 1}})
        assert reply["type"] == "error" and reply["error"]["code"] == "TOPIC_NOT_FOUND", reply
        reply = s1.call({"type": "subscribe", "topic": topic})
        assert reply["type"] == "error" and reply["error"]["code"] == "TOPIC_NOT_FOUND", reply
        for srv in (a, b):
            assert stats_topic(srv, topic) is None

        # Re-created on A: a fresh topic everywhere.
        create_topic(a, token, topic)
        for srv in (a, b):
            assert stats_topic(srv, topic) == {"messages": 0, "subscribers": 0}
        s3.subscribe(topic, last_n=10)
        assert pub.publish(topic, "fresh", msg_id="fresh")["seq"] == 1
        msg = check_event(s3.recv(timeout=10), topic, seq=1)
        assert msg["id"] == "fresh", msg
        assert s3.barrier() == []


# ---------------------------------------------------------------------------------------------
# 7. Subscriber counts follow disconnects


def test_disconnects_on_a_lower_counts_seen_on_b(cluster, token):
    a, b = cluster.a, cluster.b
    # Every earlier test closed its sockets: none of their subscriptions may still count.
    wait_until(
        lambda: _health(b)["subscribers"] == 0,
        15,
        what="/health subscribers 0 on B once earlier tests closed their sockets",
    )
    topic = create_topic(a, token)
    s1, s2, s3 = ws_connect(a, token), ws_connect(a, token), ws_connect(b, token)
    try:
        for client in (s1, s2, s3):
            client.subscribe(topic)

        def expect(n: int, what: str) -> None:
            wait_until(lambda: _health(b)["subscribers"] == n, 10, what=f"B /health {n} {what}")
            _wait_stats(a, topic, {"messages": 0, "subscribers": n})
            status, listing = http("GET", b.url + "/topics", token=token)
            assert subscribers(listing).get(topic) == n, listing

        expect(3, "after three subscribes")
        s1.close()  # clean close
        expect(2, "after a clean close on A")
        s2.conn.socket.close()  # vanished: no close frame, just a TCP close
        expect(1, "after a TCP close on A")
        s3.unsubscribe(topic)
        expect(0, "after an unsubscribe on B")
    finally:
        for client in (s1, s2, s3):
            client.close()


# ---------------------------------------------------------------------------------------------
# 6. Redis goes away and comes back (a cluster of its own: the others keep their Redis)


def test_redis_outage_gives_clear_errors_and_service_resumes(tmp_path, pg_url):
    with running_cluster(tmp_path, pg_url) as c:
        a, b = c.a, c.b
        token = register(a)
        topic = create_topic(a, token)
        with ws_connect(a, token) as pub, ws_connect(b, token) as sub:
            sub.subscribe(topic)
            assert pub.publish(topic, "before", msg_id="before")["seq"] == 1
            check_event(sub.recv(timeout=10), topic, seq=1)
            wait_until(lambda: _health(a)["subscribers"] == 1, 10, what="subscriber counted")

            c.redis.stop()

            reply = pub.call(
                {"type": "publish", "topic": topic, "message": {"id": "lost", "payload": 0}},
                timeout=20,
            )
            assert reply["type"] == "error", (reply, c.logs())
            assert reply["error"]["code"] == "INTERNAL", reply
            assert "broker" in reply["error"]["message"].lower(), reply
            pub.ping(timeout=10)  # the socket stays open

            status, body = http(
                "POST", a.url + "/topics", {"name": unique("down")}, token=token, timeout=20
            )
            assert status == 503 and isinstance(body.get("error"), str), (status, body)
            for srv in (a, b):
                assert srv.proc.poll() is None, srv.log_tail()
                # A refused connection raises here; /health needs Redis, so 503 is fair.
                status, body = http("GET", srv.url + "/health", timeout=20)
                assert status in (200, 503), (status, body, srv.log_tail())
                if status == 503:
                    assert isinstance(body.get("error"), str), body

            # Stay down a few seconds, so that the listeners' reconnect backoff grows: every
            # publish meanwhile fails cleanly on the same socket.
            outage_end = time.monotonic() + 4
            while time.monotonic() < outage_end:
                reply = pub.call(
                    {"type": "publish", "topic": topic, "message": {"id": "lost", "payload": 0}},
                    timeout=20,
                )
                assert reply["type"] == "error" and reply["error"]["code"] == "INTERNAL", reply
                pub.ping(timeout=10)
                time.sleep(0.5)

            c.redis.start()

            deadline = time.monotonic() + 20
            attempt = 0
            while True:
                attempt += 1
                msg_id = f"after-{attempt}"
                reply = pub.call(
                    {"type": "publish", "topic": topic, "message": {"id": msg_id, "payload": 1}},
                    timeout=20,
                )
                if reply["type"] == "ack":
                    break
                assert reply["type"] == "error" and reply["error"]["code"] == "INTERNAL", reply
                assert time.monotonic() < deadline, (
                    f"publishing still fails 20 s after Redis came back: {reply}\n{c.logs()}"
                )
                time.sleep(0.25)
            assert reply["status"] == "ok" and reply["seq"] == 2, reply

            # The subscriber on B stayed connected: its worker re-subscribed by itself.
            frame = sub.recv(timeout=20)
            assert check_event(frame, topic, seq=2)["id"] == msg_id, (frame, c.logs())
            assert pub.publish(topic, "again", msg_id="again")["seq"] == 3
            assert check_event(sub.recv(timeout=10), topic, seq=3)["id"] == "again"

            wait_until(
                lambda: (
                    http("POST", a.url + "/topics", {"name": unique("up")}, token=token)[0] == 201
                ),
                20,
                interval=0.25,
                what="POST /topics to work again",
            )
            _wait_stats(b, topic, {"messages": 3, "subscribers": 1}, timeout=20)

        for srv in (a, b):
            assert srv.proc.poll() is None, srv.log_tail()
            assert _workers_booted(srv) == 2, f"a worker was respawned\n{srv.log_tail(80)}"
            assert "Traceback" not in srv.log_text(), srv.log_tail(80)
