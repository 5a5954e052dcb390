"""Redis Sentinel (docs/operations.md "Scale-out with Redis"): failovers, with real processes.

Two gunicorn gateways (two workers each) share topics through a master that three
sentinels watch (quorum 2), with one replica. The master is crashed (SIGKILL):
- under steady publishing, publishes answer 503 for a bounded time, then succeed by
  themselves, and every subscriber gets every acknowledged event once, in order;
- when the replica had not received the last acknowledged writes (it is frozen and cut off
  first, so that the loss is certain), the topic moves to a new epoch with its seq raised to
  what was delivered: no seq is handed out twice, and a resume from the old epoch is not
  `recovered`.
Two more tests drive the listener's rewind and loss handling in process, against one
redis-server that loses data under it. Without redis-server they skip (fail under CI).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from orjson import dumps as enc

# tests/ holds the Redis helpers and the broker contract's Recorder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import wait_healthy  # noqa: E402
from harness import PASSWORD, NoFrame, Server, http, register, unique, ws_connect  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from sentinel import SentinelCluster, client, poll  # noqa: E402
from test_broker_contract import Recorder, encode  # noqa: E402

from gateway.brokers.redis import RedisBroker  # noqa: E402

# From the crash to the first publish that succeeds again, at most (the failover itself takes
# about 3 s: 1 s before the master counts as down, then the election and the promotion).
RECOVERY_BOUND = 30.0


# ---------------------------------------------------------------------------------------------
# Helpers


class Subscriber:
    """A WebSocket subscriber whose frames a thread collects."""

    def __init__(self, server: Server, token: str, topic: str, **subscribe) -> None:
        self.name = f"subscriber on :{server.port}"
        self.client = ws_connect(server, token)
        self.ack = self.client.subscribe(topic, **subscribe)
        self.frames: list[dict] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.client.recv(timeout=0.2)
            except NoFrame:
                continue
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc
                return
            with self._lock:
                self.frames.append(frame)

    def events(self) -> list[tuple[int, str]]:
        """(seq, id) of every event received, in order."""
        with self._lock:
            frames = list(self.frames)
        return [(f["message"]["seq"], f["message"]["id"]) for f in frames if f["type"] == "event"]

    def dropped(self) -> list[tuple[int, int]]:
        """(from_seq, to_seq) of every `dropped` notice received."""
        with self._lock:
            frames = list(self.frames)
        return [
            (f["from_seq"], f["to_seq"])
            for f in frames
            if f["type"] == "info" and f.get("msg") == "dropped"
        ]

    def others(self) -> list[dict]:
        """Frames that are neither events nor `dropped` notices (expected: none)."""
        with self._lock:
            return [
                f
                for f in self.frames
                if f["type"] != "event" and not (f["type"] == "info" and f["msg"] == "dropped")
            ]

    def has(self, seqs: set[int]) -> bool:
        """Tell whether every seq in `seqs` arrived, or a `dropped` notice covered it."""
        got = {seq for seq, _ in self.events()}
        dropped = self.dropped()
        return all(s in got or any(a <= s <= b for a, b in dropped) for s in seqs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


class Publisher(threading.Thread):
    """Publish over HTTP every `interval` seconds, alternating between the gateways."""

    def __init__(self, servers: list[Server], token: str, topic: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.servers, self.token, self.topic, self.interval = servers, token, topic, interval
        # (sent at, answered at, status or None, body or the error, message id)
        self.results: list[tuple[float, float, int | None, object, str]] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        count = 0
        while not self._halt.is_set():
            server = self.servers[count % len(self.servers)]
            message_id = f"p{count}"
            sent = time.monotonic()
            try:
                status, body = http(
                    "POST",
                    f"{server.url}/topics/{self.topic}/messages",
                    {"id": message_id, "payload": count},
                    token=self.token,
                    timeout=15,
                )
            except OSError as exc:
                status, body = None, repr(exc)
            with self._lock:
                self.results.append((sent, time.monotonic(), status, body, message_id))
            count += 1
            self._halt.wait(self.interval)

    def snapshot(self) -> list[tuple[float, float, int | None, object, str]]:
        with self._lock:
            return list(self.results)

    def acked(self) -> dict[int, str]:
        """seq -> id of every acknowledged publish."""
        return {r[3]["seq"]: r[4] for r in self.snapshot() if r[2] == 201}

    def stop(self) -> None:
        self._halt.set()
        self.join(20)
        assert not self.is_alive(), "the publisher did not stop"


def publish(server: Server, token: str, topic: str, message_id: str) -> int:
    status, body = http(
        "POST",
        f"{server.url}/topics/{topic}/messages",
        {"id": message_id, "payload": message_id},
        token=token,
    )
    assert status == 201, (status, body)
    return body["seq"]


def check_delivery(subscriber: Subscriber, acked: dict[int, str], seen: dict[int, str]) -> None:
    """Each acknowledged event arrived once, in order (or a `dropped` notice covered it); no
    seq ever came with two ids (`seen` collects seq -> id across subscribers)."""
    events = subscriber.events()
    seqs = [seq for seq, _ in events]
    assert seqs == sorted(set(seqs)), f"{subscriber.name}: out of order or twice: {seqs}"
    dropped = subscriber.dropped()
    got = dict(events)
    for seq, message_id in acked.items():
        if any(a <= seq <= b for a, b in dropped):
            continue
        assert got.get(seq) == message_id, (
            f"{subscriber.name}: acknowledged seq {seq} ({message_id}) arrived as "
            f"{got.get(seq)!r}; dropped notices {dropped}"
        )
    for seq, message_id in events:
        assert seen.setdefault(seq, message_id) == message_id, (
            f"seq {seq} delivered as {message_id} and as {seen[seq]}: a reused seq"
        )
    assert not subscriber.others(), subscriber.others()
    assert subscriber.error is None, f"{subscriber.name}: {subscriber.error!r}"


@contextlib.contextmanager
def gateways(workdir: Path, **env: str) -> Iterator[tuple[SentinelCluster, Server, Server]]:
    """A Sentinel-watched master, a replica, three sentinels, and gateways A and B on them."""
    cluster = SentinelCluster(workdir / "redis")
    servers: list[Server] = []
    try:
        cluster.start()
        shared = {
            "BROKER_URL": cluster.url,
            "DATABASE_URL": str(workdir / "users.db"),  # one SQLite file for both
            "JWT_SECRET_KEY": "sentinel-test-" + "0123456789abcdef" * 3,
            "WEB_CONCURRENCY": "2",
            "HEARTBEAT_INTERVAL": "0",
            "SHUTDOWN_GRACE_SECONDS": "2",
            **env,
        }
        servers = [Server(workdir, env=shared).launch() for _ in range(2)]
        wait_healthy(servers)
        yield cluster, servers[0], servers[1]
    finally:
        for server in servers:
            server.close()
        cluster.close()


def logs(cluster: SentinelCluster, *servers: Server) -> str:
    return "\n".join([*(s.log_tail(30) for s in servers), cluster.logs()])


# ---------------------------------------------------------------------------------------------
# Gateways on Sentinel


@pytest.mark.timeout(90)
def test_a_failover_under_steady_publishing_loses_no_acknowledged_event(tmp_path):
    # A large ring, so that what the listeners miss while they reconnect is repaired from it.
    with gateways(tmp_path, RING_BUFFER_SIZE="2000", SUBSCRIBER_QUEUE_SIZE="5000") as (
        cluster,
        a,
        b,
    ):
        token = register(a)
        topic = unique("failover")
        status, body = http("POST", a.url + "/topics", {"name": topic}, token=token)
        assert status == 201, (status, body)
        subscribers = [Subscriber(a, token, topic), Subscriber(b, token, topic)]
        publisher = Publisher([a, b], token, topic, interval=0.02)
        publisher.start()
        try:
            poll(lambda: len(publisher.acked()) >= 20, 15, "20 acknowledged publishes")
            poll(
                lambda: all(s.has(set(publisher.acked())) for s in subscribers),
                10,
                "the subscribers to keep up before the crash",
            )

            crashed = time.monotonic()
            cluster.kill_master()

            def recovered() -> list:
                return [r for r in publisher.snapshot() if r[0] > crashed and r[2] == 201]

            try:
                poll(
                    lambda: len(recovered()) >= 20,
                    RECOVERY_BOUND + 10,
                    "publishes to succeed again",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{logs(cluster, a, b)}") from None
        finally:
            publisher.stop()

        results = publisher.snapshot()
        acked = publisher.acked()
        try:
            poll(
                lambda: all(s.has(set(acked)) for s in subscribers),
                20,
                "every subscriber to get every acknowledged event",
            )
        except AssertionError as exc:
            missing = [sorted(set(acked) - {q for q, _ in s.events()}) for s in subscribers]
            raise AssertionError(f"{exc}; missing {missing}\n{logs(cluster, a, b)}") from None

        # Publishes: 201 before the crash, 503 for a while, then 201 again by themselves.
        assert {r[2] for r in results} <= {201, 503}, [r for r in results if r[2] not in (201, 503)]
        before = [r for r in results if r[1] < crashed]
        assert all(r[2] == 201 for r in before), [r for r in before if r[2] != 201]
        failed = [r for r in results if r[2] == 503]
        assert failed, "no publish saw the outage"
        back = next(r for r in results if r[0] > crashed and r[2] == 201)
        assert back[1] - crashed < RECOVERY_BOUND, f"publishes failed for {back[1] - crashed:.1f}s"
        after = [r for r in results if r[0] >= back[0]]
        assert all(r[2] == 201 for r in after), [r for r in after if r[2] != 201][:5]
        seqs = [r[3]["seq"] for r in results if r[2] == 201]
        assert seqs == sorted(set(seqs)), f"acknowledged seqs not increasing: {seqs}"

        seen: dict[int, str] = {}
        for subscriber in subscribers:
            check_delivery(subscriber, acked, seen)
            subscriber.close()
        outage = max(r[1] for r in failed) - crashed
        print(f"publishes failed for {outage:.1f}s after the crash ({len(failed)} answered 503)")


@pytest.mark.timeout(90)
def test_a_topic_that_went_back_in_a_failover_moves_to_a_new_epoch(tmp_path):
    with gateways(tmp_path) as (cluster, a, b):
        token = register(a)
        topic = unique("rewind")
        status, body = http("POST", a.url + "/topics", {"name": topic}, token=token)
        assert status == 201, (status, body)
        subscribers = [Subscriber(a, token, topic), Subscriber(b, token, topic)]
        old_epoch = subscribers[0].ack["epoch"]
        acked = {}
        for i in range(10):
            acked[publish((a, b)[i % 2], token, topic, f"m{i}")] = f"m{i}"
        poll(
            lambda: client(cluster.replica.port).get(f"gw:seq:{topic}") == b"10",
            10,
            "the replica to hold seq 10",
        )

        # Replication stops: the replica is frozen and cut off, so what the master
        # acknowledges now, it alone holds. Then it crashes.
        cluster.replica.send_signal(signal.SIGSTOP)
        try:
            client(cluster.master.port).client_kill_filter(_type="replica")
            for i in range(10, 15):
                acked[publish((a, b)[i % 2], token, topic, f"m{i}")] = f"m{i}"
            poll(
                lambda: all(s.has(set(acked)) for s in subscribers),
                10,
                "the subscribers to get seq 1-15",
            )
            cluster.kill_master()
        finally:
            cluster.replica.send_signal(signal.SIGCONT)
        assert sorted(acked) == list(range(1, 16)), acked
        cluster.wait_failover()

        def history() -> dict | None:
            status, body = http("GET", f"{b.url}/topics/{topic}/messages", token=token)
            return body if status == 200 and body["epoch"] != old_epoch else None

        try:
            rewound = poll(history, RECOVERY_BOUND, "the topic to move to a new epoch", 0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(cluster, a, b)}") from None
        # Its seq is what was delivered, though the new master only had 10 of the 15.
        assert rewound["seq"] == 15, rewound
        assert [m["seq"] for m in rewound["messages"]] == list(range(1, 11)), rewound
        text = a.log_text() + b.log_text()
        assert f"redis_topic_rewound topic={topic} from=10 to=15" in text, logs(cluster, a, b)

        for i in range(15, 20):
            acked[publish((a, b)[i % 2], token, topic, f"m{i}")] = f"m{i}"
        assert sorted(acked) == list(range(1, 21)), f"seqs handed out again: {sorted(acked)}"
        poll(lambda: all(s.has(set(acked)) for s in subscribers), 10, "seq 16-20")
        seen: dict[int, str] = {}
        for subscriber in subscribers:
            check_delivery(subscriber, acked, seen)
            assert not subscriber.dropped()
            subscriber.close()

        # A client that saw seq 12 of the old epoch resumes: not recovered (11-15 are gone).
        with ws_connect(a, token) as resumer:
            ack = resumer.subscribe(topic, since_seq=12, epoch=old_epoch)
            assert ack["recovered"] is False and ack["epoch"] == rewound["epoch"], ack
            assert ack["seq"] == 20, ack
        # One that saw seq 17 of the new epoch is.
        with ws_connect(b, token) as resumer:
            ack = resumer.subscribe(topic, since_seq=17, epoch=rewound["epoch"])
            assert ack["recovered"] is True, ack
            replay = [resumer.recv()["message"]["seq"] for _ in range(3)]
            assert replay == [18, 19, 20], replay
        status, body = http(
            "GET",
            f"{a.url}/topics/{topic}/messages?since_seq=12&epoch={old_epoch}",
            token=token,
        )
        assert status == 200 and body["complete"] is False, body


# ---------------------------------------------------------------------------------------------
# The listener's rewind, in process, against a redis-server that loses data under it


@pytest.fixture
def lossy_redis(tmp_path):
    server = RedisServer(tmp_path, persist=False).start()
    made: list[RedisBroker] = []

    def broker() -> RedisBroker:
        made.append(RedisBroker(server.url, 100, encode).start())
        return made[-1]

    yield server, broker, client(server.port)
    for b in made:
        b.close()
    server.stop()


@pytest.mark.timeout(30)
def test_a_seq_that_went_back_moves_the_topic_to_a_new_epoch_once(lossy_redis, caplog):
    caplog.set_level(logging.INFO, logger="gateway.broker")
    _, make, r = lossy_redis
    a, b = make(), make()
    a.create_topic("t")
    ra, rb = Recorder(), Recorder()
    a.subscribe("t", ra)
    b.subscribe("t", rb)
    for i in range(5):
        a.publish("t", f"m{i}", enc(i))
    for rec in (ra, rb):
        rec.wait(lambda x: x.seqs() == [1, 2, 3, 4, 5])
    old_epoch = r.hget("gw:topics", "t")

    # What a failover to a replica that lagged leaves: the last three messages are gone.
    r.set("gw:seq:t", 2)
    r.ltrim("gw:ring:t", 0, 1)
    r.client_kill_filter(_type="pubsub")  # both listeners reconnect and check their topics
    poll(lambda: r.hget("gw:topics", "t") != old_epoch, 10, "the topic to move to a new epoch")
    assert r.get("gw:seq:t") == b"5"

    assert a.publish("t", "m5", enc(5)).seq == 6
    for rec in (ra, rb):
        rec.wait(lambda x: x.seqs() == [1, 2, 3, 4, 5, 6])
    assert [e.id for e in ra.events] == [f"m{i}" for i in range(6)]
    rewinds = [
        rec.getMessage() for rec in caplog.records if "redis_topic_rewound" in rec.getMessage()
    ]
    assert rewinds == ["redis_topic_rewound topic=t from=2 to=5"], rewinds

    new_epoch = r.hget("gw:topics", "t").decode()
    resumed = b.subscribe("t", Recorder(), since_seq=3, epoch=old_epoch.decode())
    assert (resumed.recovered, resumed.epoch, resumed.seq) == (False, new_epoch, 6)
    assert not b.history("t", since_seq=3, epoch=old_epoch.decode()).complete
    assert b.history("t", since_seq=5, epoch=new_epoch).complete


@pytest.mark.timeout(30)
def test_a_topic_lost_from_redis_is_gone_for_its_subscribers(lossy_redis, caplog):
    caplog.set_level(logging.INFO, logger="gateway.broker")
    _, make, r = lossy_redis
    broker = make()
    broker.create_topic("t")
    before = Recorder()
    broker.subscribe("t", before)
    broker.publish("t", "m0", enc(0))
    before.wait(lambda x: x.seqs() == [1])

    # Its creation was not replicated before a failover (or it was deleted while this
    # worker was disconnected, and the notice was lost with the connection).
    r.hdel("gw:topics", "t")
    r.delete("gw:seq:t", "gw:ring:t", "gw:ringbytes:t")
    r.client_kill_filter(_type="pubsub")
    before.wait(lambda x: x.deleted == ["t"], timeout=10)
    assert any("redis_topic_lost topic=t last=1" in rec.getMessage() for rec in caplog.records)

    # Created again, it starts at seq 1, and its events are not mistaken for old ones.
    broker.create_topic("t")
    after = Recorder()
    broker.subscribe("t", after)
    assert broker.publish("t", "n0", enc(0)).seq == 1
    after.wait(lambda x: x.seqs() == [1])
    assert before.seqs() == [1] and after.events[0].id == "n0"


@pytest.mark.timeout(60)
def test_rate_limits_count_in_the_sentinel_master(tmp_path):
    """With the default limits on, the limiter shares its counters through the same master."""
    with gateways(tmp_path, LOGIN_RATE_LIMIT="4/minute", PUBLISH_RATE_LIMIT="100/second") as (
        cluster,
        a,
        b,
    ):
        register(a, "limited")
        statuses = [
            http("POST", srv.url + "/users/login", {"username": "limited", "password": PASSWORD})[0]
            for srv in (a, b, a, b)
        ]
        # Registering and three logins fill the minute, counted across both gateways.
        assert statuses == [200, 200, 200, 429], (statuses, logs(cluster, a, b))
