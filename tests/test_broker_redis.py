"""RedisBroker faults against a real redis-server: outage, recovery and pub/sub gaps."""

from __future__ import annotations

import time

import pytest
import redis
from orjson import dumps as enc
from orjson import loads
from redis_server import RedisServer
from test_broker_contract import Recorder, encode

from gateway.brokers import BrokerUnavailable, Publish
from gateway.brokers.redis import RedisBroker


@pytest.fixture
def server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def make_broker(server):
    made = []

    def make(ring_size: int = 100) -> RedisBroker:
        broker = RedisBroker(server.url, ring_size, encode).start()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def retry(call, timeout: float = 20.0):
    """Call until it stops raising BrokerUnavailable, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except BrokerUnavailable:
            assert time.monotonic() < deadline, "the broker did not recover in time"
            time.sleep(0.2)


def test_outage_fails_clearly_then_recovers_by_itself(server, make_broker):
    broker = make_broker()
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    broker.publish("t", "1", enc(None))
    s.wait(lambda r: r.seqs() == [1])

    server.stop()
    with pytest.raises(BrokerUnavailable):
        broker.publish("t", "2", enc(None))
    with pytest.raises(BrokerUnavailable):
        broker.topics()

    server.start()  # same port, data kept (append-only file)
    event = retry(lambda: broker.publish("t", "3", enc(None)))
    assert event.seq == 2
    # The listener reconnected and resubscribed by itself: the subscriber gets it live.
    s.wait(lambda r: r.seqs() == [1, 2], timeout=20)


def test_events_lost_by_pubsub_are_repaired_from_the_ring(server, make_broker):
    listening, publishing = make_broker(), make_broker()
    listening.create_topic("t")
    s = Recorder()
    listening.subscribe("t", s)
    for i in range(5):
        publishing.publish("t", str(i), enc(i))
    s.wait(lambda r: len(r.events) == 5)

    # Cut the listener's pub/sub connection; what is published now never reaches it.
    admin = redis.Redis.from_url(server.url)
    assert admin.client_kill_filter(_type="pubsub") >= 1
    for i in range(5, 15):
        publishing.publish("t", str(i), enc(i))
    s.wait(lambda r: len(r.events) >= 15, timeout=20)
    time.sleep(0.2)
    assert s.seqs() == list(range(1, 16))
    assert [loads(e.payload) for e in s.events] == list(range(15))
    admin.close()


def test_workers_share_topics_counts_and_one_order(make_broker):
    one, two = make_broker(), make_broker()
    one.create_topic("t")
    assert [t.name for t in two.topics()] == ["t"]
    a, b = Recorder(), Recorder()
    one.subscribe("t", a)
    two.subscribe("t", b)
    assert one.subscriber_count() == two.subscriber_count() == 2
    for i in range(50):
        (one if i % 2 else two).publish("t", str(i), enc(i))
    for r in (a, b):
        r.wait(lambda r: len(r.events) == 50)
        assert r.seqs() == list(range(1, 51))
    two.delete_topic("t")
    a.wait(lambda r: r.deleted == ["t"])
    b.wait(lambda r: r.deleted == ["t"])
    assert one.subscriber_count() == 0


def test_a_dead_worker_stops_being_counted(server, make_broker):
    broker = make_broker()
    broker.create_topic("t")
    broker.subscribe("t", Recorder())
    admin = redis.Redis.from_url(server.url)
    # A worker that vanished without a goodbye: its counts stay, its heartbeat ages.
    admin.hset("gw:subs:dead", mapping={"t": 7})
    admin.zadd("gw:workers", {"dead": time.time() - 60})
    assert broker.subscriber_count() == 1
    assert [(t.name, t.subscribers) for t in broker.topics()] == [("t", 1)]
    # The same counts with a fresh heartbeat are a live worker's, and are summed.
    admin.zadd("gw:workers", {"dead": time.time()})
    assert broker.subscriber_count() == 8
    admin.close()


def test_a_bad_entry_on_the_channel_does_not_silence_the_listener(server, make_broker, caplog):
    # Once, one message the listener could not re-encode killed its thread for good.
    broker = make_broker()
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    broker.publish("t", "1", enc(1))
    s.wait(lambda r: r.seqs() == [1])
    admin = redis.Redis.from_url(server.url)
    admin.publish("gw:chan:t", b"2:not a packed message")  # seq 2, unreadable
    admin.incr("gw:seq:t")  # so that the next publish is seq 3
    broker.publish("t", "3", enc(3))
    s.wait(lambda r: 3 in r.seqs(), timeout=10)
    assert "redis_listener_bad_message topic=t" in caplog.text
    wait_ready(broker)
    admin.close()


def wait_ready(broker: RedisBroker, timeout: float = 20.0) -> None:
    """Wait until the broker reports no problems (its listener connects in the background)."""
    deadline = time.monotonic() + timeout
    while broker.problems():
        assert time.monotonic() < deadline, broker.problems()
        time.sleep(0.1)


def test_problems_name_an_unreachable_redis(server, make_broker):
    broker = make_broker()
    wait_ready(broker)
    server.stop()
    assert "broker" in broker.problems()
    server.start()
    wait_ready(broker)


def test_a_ring_kept_by_an_older_gateway_gets_its_byte_count(server, make_broker):
    # Older gateways kept no byte count: the first publish counts the ring once, so that
    # RING_BUFFER_BYTES holds for it too (the count once went negative).
    broker = make_broker(ring_size=100)
    broker.create_topic("t")
    admin = redis.Redis.from_url(server.url)
    old = [f'{i}:{{"id":"o{i}","payload":"{"x" * 100}","timestamp":1.0}}'.encode() for i in (1, 2)]
    admin.rpush("gw:ring:t", *old)
    admin.set("gw:seq:t", 2)
    admin.delete("gw:ringbytes:t")
    broker.publish("t", "new", enc("y"))
    ring = admin.lrange("gw:ring:t", 0, -1)
    assert len(ring) == 3
    assert int(admin.get("gw:ringbytes:t")) == sum(len(entry) for entry in ring)
    assert [e.id for e in broker.history("t").events] == ["o1", "o2", "new"]
    admin.close()


def test_a_stale_copy_of_access_never_decides_for_a_topic_created_again(make_broker):
    # Worker A keeps a copy of a topic's access for publishes (up to a second). When worker
    # B deletes the topic and creates another under the same name, A's copy must not decide
    # for the new topic, either way.
    from gateway.guards import access

    a, b = make_broker(), make_broker()
    b.create_topic("t", owner="o", publish="anyone")
    a.publish("t", "1", enc(1), publisher="x", check=access.check(access.PUBLISH, "x", "t"))
    b.delete_topic("t")
    b.create_topic("t", owner="o", publish="owner")
    with pytest.raises(access.Forbidden):  # the old "anyone" copy does not let x in
        a.publish("t", "2", enc(2), publisher="x", check=access.check(access.PUBLISH, "x", "t"))
    b.delete_topic("t")
    b.create_topic("t", owner="x", publish="owner")
    # The old "owner is o" copy does not keep x, the new owner, out.
    event = a.publish("t", "3", enc(3), publisher="x", check=access.check(access.PUBLISH, "x", "t"))
    assert event.seq == 1
    # A delete checked against the old topic does not delete the new one.
    a.access("t")
    b.delete_topic("t")
    b.create_topic("t", owner="o")
    with pytest.raises(access.Forbidden):
        a.delete_topic("t", check=access.check(access.DELETE, "x", "t"))
    assert [t.name for t in b.topics()] == ["t"]


def test_a_channel_nobody_here_follows_is_unsubscribed_and_comes_back(make_broker, monkeypatch):
    from gateway.brokers.redis import listener

    monkeypatch.setattr(listener, "SWEEP_SECONDS", 0.05)
    broker = make_broker()
    broker.create_topic("t")
    channel = "gw:chan:t"
    watcher = broker._redis

    def listeners() -> int:
        return dict(watcher.pubsub_numsub(channel))[channel.encode()]

    stay, churn = Recorder(), Recorder()
    broker.subscribe("t", churn)
    assert listeners() == 1
    broker.unsubscribe("t", churn)
    deadline = time.monotonic() + 10
    while listeners() and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the condition: the sweep runs every SWEEP_SECONDS
    assert listeners() == 0, "the idle channel is still subscribed"
    # Back again: the channel is subscribed anew and nothing published after the ack is lost.
    for round_ in range(5):
        subscription = broker.subscribe("t", stay if round_ == 0 else churn)
        published = broker.publish("t", f"m{round_}", enc(round_))
        assert published.seq == subscription.seq + 1
        if round_:
            churn.wait(lambda r, seq=published.seq: seq in r.seqs())
            broker.unsubscribe("t", churn)
    stay.wait(lambda r: r.seqs() == [1, 2, 3, 4, 5])
    assert listeners() == 1  # still followed by `stay`


def test_counts_are_exact_after_subscribe_churn_across_a_redis_restart(server, make_broker):
    # Subscribes and unsubscribes keep coming while Redis restarts: some increments cannot
    # reach it. Once it is back, the worker's counts in Redis match its local truth again.
    broker = make_broker()
    broker.create_topic("a")
    broker.create_topic("b")
    kept = [Recorder() for _ in range(4)]
    for s in kept:
        broker.subscribe("a", s)
    churn = [Recorder() for _ in range(6)]
    for s in churn:
        broker.subscribe("b", s)
    server.stop()
    # While Redis is away: unsubscribes (local only; the increment is lost) ...
    for s in churn[:4]:
        broker.unsubscribe_all(s)
    server.start()  # same data (append-only file), counts as they were before the churn
    # ... and subscribes again once it answers, racing the heartbeat's rewrite.
    retry(lambda: broker.subscribe("a", churn[0]))
    broker.subscribe("b", churn[1])
    truth = {"a": 5, "b": 3}
    deadline = time.monotonic() + 20  # the rewrite comes with the next heartbeat (5 s)
    while {t.name: t.subscribers for t in retry(broker.topics)} != truth:
        assert time.monotonic() < deadline, {t.name: t.subscribers for t in broker.topics()}
        time.sleep(0.1)
    assert retry(broker.subscriber_count) == 8


def test_a_publisher_never_reuses_a_seq_it_was_given_when_redis_goes_back(make_broker):
    # As after a failover that lost writes not yet replicated: Redis holds a lower seq than
    # the publishes this worker was acknowledged. The next publish moves the topic to a new
    # epoch and continues above them, instead of handing out 4, 5... again.
    broker = make_broker()
    broker.create_topic("t")
    for i in range(10):
        broker.publish("t", f"m{i}", enc(i))
    before = broker.history("t").epoch
    broker._redis.set("gw:seq:t", 3)  # what a lossy failover leaves behind
    event = broker.publish("t", "after", enc("after"))
    assert event.seq == 11
    history = broker.history("t")
    assert history.epoch != before and history.seq == 11
    # A topic deleted and created again starts from 1: the floor belonged to the old one.
    broker.delete_topic("t")
    broker.create_topic("t")
    assert broker.publish("t", "fresh", enc(0)).seq == 1


def test_a_batch_of_publishes_after_redis_lost_its_scripts_is_published_in_order(
    server, make_broker
):
    broker = make_broker()
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    admin = redis.Redis.from_url(server.url)
    admin.script_flush()  # what a Redis restart does to the scripts the gateway loaded
    results = broker.publish_many([Publish("t", str(i), enc(i)) for i in range(5)])
    assert [e.seq for e in results] == [1, 2, 3, 4, 5]
    s.wait(lambda r: len(r.events) == 5)
    assert [loads(e.payload) for e in s.events] == list(range(5))
    admin.close()
