"""One contract suite for every Broker implementation: memory and Redis (a real server)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from orjson import dumps as enc
from orjson import loads
from redis_server import RedisServer

from gateway.brokers import (
    IDEMPOTENCY_KEYS_PER_TOPIC,
    Access,
    Event,
    LimitExceeded,
    MemoryBroker,
    Publish,
    Quotas,
    TopicExists,
    TopicNotFound,
)


class Recorder:
    """A Subscriber that remembers what it was handed; safe to wait on from the test."""

    def __init__(self, user_id: str = "u") -> None:
        self.user_id = user_id
        self.events: list[Event] = []
        self.deleted: list[str] = []
        self.revoked: list[str] = []
        self._changed = threading.Condition()

    def deliver(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def topic_deleted(self, topic: str) -> None:
        with self._changed:
            self.deleted.append(topic)
            self._changed.notify_all()

    def access_revoked(self, topic: str) -> None:
        with self._changed:
            self.revoked.append(topic)
            self._changed.notify_all()

    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]

    def wait(self, predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out; seqs={self.seqs()} deleted={self.deleted}"
                self._changed.wait(remaining)


def encode(event: Event) -> bytes:
    return f"{event.topic}:{event.seq}".encode()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def make_broker(request):
    made = []

    def make(ring_size: int = 5, **quotas):
        quotas = Quotas(**quotas)
        if request.param == "memory":
            broker = MemoryBroker(ring_size, encode, quotas)
        else:
            from gateway.brokers.redis import RedisBroker

            server = request.getfixturevalue("redis_server")
            prefix = f"t{time.monotonic_ns()}"
            broker = RedisBroker(
                server.url,
                ring_size,
                encode,
                prefix=prefix,
                quotas=quotas,
            ).start()
            broker.prefix = prefix
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def test_fan_out_in_seq_order_exactly_once(make_broker):
    broker = make_broker()
    broker.create_topic("t")
    subscribers = [Recorder() for _ in range(3)]
    for s in subscribers:
        broker.subscribe("t", s)
    for i in range(20):
        assert broker.publish("t", f"m{i}", enc({"i": i})).seq == i + 1
    for s in subscribers:
        s.wait(lambda r: len(r.events) >= 20)
        assert s.seqs() == list(range(1, 21))
        assert [loads(e.payload) for e in s.events] == [{"i": i} for i in range(20)]
        assert all(e.wire == f"t:{e.seq}".encode() for e in s.events)


def test_topics_are_isolated(make_broker):
    broker = make_broker()
    broker.create_topic("a")
    broker.create_topic("b")
    on_a, on_b = Recorder(), Recorder()
    broker.subscribe("a", on_a)
    broker.subscribe("b", on_b)
    broker.publish("a", "1", enc(None))
    broker.publish("b", "2", enc(None))
    on_a.wait(lambda r: len(r.events) == 1)
    on_b.wait(lambda r: len(r.events) == 1)
    assert on_a.events[0].topic == "a" and on_b.events[0].topic == "b"


def test_replay_then_live_without_gap_or_duplicate(make_broker):
    broker = make_broker(ring_size=5)
    broker.create_topic("t")
    for i in range(8):
        broker.publish("t", str(i), enc(i))
    late = Recorder()
    subscription = broker.subscribe("t", late, last_n=3)
    assert [e.seq for e in subscription.replay] == [6, 7, 8]
    assert [loads(e.payload) for e in subscription.replay] == [5, 6, 7]
    assert subscription.seq == 8
    assert [e.seq for e in broker.subscribe("t", Recorder(), last_n=50).replay] == [4, 5, 6, 7, 8]
    broker.publish("t", "x", enc(None))
    # Delivery is in seq order: once the marker (seq 10) is in, a late duplicate of a
    # replayed event would have arrived before it.
    broker.publish("t", "marker", enc(None))
    late.wait(lambda r: r.seqs()[-1:] == [10])
    assert late.seqs() == [9, 10]


def test_subscribe_during_publishing_seam(make_broker):
    broker = make_broker(ring_size=1000)
    broker.create_topic("t")
    stop = threading.Event()

    def publisher():
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            broker.publish("t", "m", enc(None))
            time.sleep(0.0005)

    thread = threading.Thread(target=publisher)
    thread.start()
    deadline = time.monotonic() + 10
    while broker.topics()[0].messages < 20 and time.monotonic() < deadline:
        time.sleep(0.001)  # until publishing is under way
    s = Recorder()
    subscription = broker.subscribe("t", s, last_n=10)
    s.wait(lambda r: len(r.events) >= 20)
    stop.set()
    thread.join(10)
    last = broker.topics()[0].messages
    s.wait(lambda r: r.events[-1].seq == last, timeout=10)
    # As Session does, live events at or below the snapshot's seq are skipped; nothing may
    # be missing or doubled between the replay and the live stream.
    live = [e.seq for e in s.events if e.seq > subscription.seq]
    seqs = [e.seq for e in subscription.replay] + live
    assert seqs == list(range(subscription.seq - 9, last + 1))


def test_double_subscribe_is_one_subscription(make_broker):
    broker = make_broker()
    broker.create_topic("t")
    broker.publish("t", "1", enc(None))
    s = Recorder()
    assert len(broker.subscribe("t", s, last_n=5).replay) == 1
    assert broker.subscribe("t", s, last_n=5).replay == []
    assert broker.subscriber_count() == 1
    broker.publish("t", "2", enc(None))
    broker.publish("t", "marker", enc(None))  # in order: a doubled seq 2 comes before it
    s.wait(lambda r: r.seqs()[-1:] == [3])
    assert s.seqs() == [2, 3]


def test_unknown_topics_and_duplicates(make_broker):
    broker = make_broker()
    for call in (
        lambda: broker.publish("nope", "1", enc(None)),
        lambda: broker.subscribe("nope", Recorder()),
        lambda: broker.unsubscribe("nope", Recorder()),
        lambda: broker.delete_topic("nope"),
    ):
        with pytest.raises(TopicNotFound):
            call()
    broker.create_topic("t")
    with pytest.raises(TopicExists):
        broker.create_topic("t")


def test_unsubscribe_and_counts(make_broker):
    broker = make_broker()
    broker.create_topic("a")
    broker.create_topic("b")
    s, other = Recorder(), Recorder()
    broker.subscribe("a", s)
    broker.subscribe("b", s)
    broker.subscribe("a", other)
    assert broker.subscriber_count() == 3
    assert {t.name: t.subscribers for t in broker.topics()} == {"a": 2, "b": 1}
    broker.unsubscribe("a", s)
    broker.unsubscribe("a", s)
    assert broker.subscriber_count() == 2
    broker.unsubscribe_all(s)
    assert {t.name: t.subscribers for t in broker.topics()} == {"a": 1, "b": 0}
    broker.publish("a", "1", enc(None))
    other.wait(lambda r: len(r.events) == 1)
    assert s.events == []


def test_delete_notifies_and_recreate_starts_fresh(make_broker):
    broker = make_broker()
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    broker.publish("t", "1", enc(None))
    broker.delete_topic("t")
    s.wait(lambda r: r.deleted == ["t"])
    assert broker.subscriber_count() == 0
    with pytest.raises(TopicNotFound):
        broker.publish("t", "2", enc(None))
    broker.create_topic("t")
    (info,) = broker.topics()
    assert (info.messages, info.subscribers) == (0, 0)
    assert broker.subscribe("t", Recorder(), last_n=10).replay == []
    assert broker.publish("t", "3", enc(None)).seq == 1


def test_message_count_is_not_capped_by_the_ring(make_broker):
    broker = make_broker(ring_size=3)
    broker.create_topic("t")
    for i in range(7):
        broker.publish("t", str(i), enc(None))
    assert broker.topics()[0].messages == 7


def test_resume_since_seq_recovers_exactly_what_was_missed(make_broker):
    broker = make_broker(ring_size=20)
    broker.create_topic("t")
    first = broker.subscribe("t", Recorder())
    for i in range(15):
        broker.publish("t", str(i), enc(i))
    s = Recorder()
    resumed = broker.subscribe("t", s, since_seq=5, epoch=first.epoch)
    assert resumed.recovered is True
    assert [e.seq for e in resumed.replay] == list(range(6, 16))
    assert (resumed.seq, resumed.epoch) == (15, first.epoch)
    caught_up = broker.subscribe("t", Recorder(), since_seq=15, epoch=first.epoch)
    assert (caught_up.replay, caught_up.recovered) == ([], True)


def test_resume_beyond_the_ring_is_not_recovered(make_broker):
    broker = make_broker(ring_size=5)
    broker.create_topic("t")
    epoch = broker.subscribe("t", Recorder()).epoch
    for i in range(12):
        broker.publish("t", str(i), enc(i))
    resumed = broker.subscribe("t", Recorder(), since_seq=2, epoch=epoch)
    assert resumed.recovered is False
    assert [e.seq for e in resumed.replay] == [8, 9, 10, 11, 12]


def test_a_recreated_topic_is_a_new_epoch(make_broker):
    broker = make_broker(ring_size=10)
    broker.create_topic("t")
    old = broker.subscribe("t", Recorder()).epoch
    for i in range(3):
        broker.publish("t", str(i), enc(i))
    broker.delete_topic("t")
    broker.create_topic("t")
    broker.publish("t", "new", enc(None))
    resumed = broker.subscribe("t", Recorder(), since_seq=3, epoch=old)
    assert resumed.epoch != old
    assert resumed.recovered is False
    assert [e.seq for e in resumed.replay] == [1]


def test_history_since_seq_with_limit(make_broker):
    broker = make_broker(ring_size=10)
    broker.create_topic("t")
    for i in range(14):
        broker.publish("t", f"m{i}", enc({"i": i}))
    page = broker.history("t", since_seq=6, limit=3)
    assert [e.seq for e in page.events] == [7, 8, 9]
    assert [loads(e.payload) for e in page.events] == [{"i": 6}, {"i": 7}, {"i": 8}]
    assert (page.seq, page.complete) == (14, True)
    assert broker.history("t", since_seq=0).complete is False  # seqs 1-4 left the ring
    assert [e.seq for e in broker.history("t").events] == list(range(5, 15))
    with pytest.raises(TopicNotFound):
        broker.history("nope")


def test_idempotent_publish_delivers_once_and_returns_the_first_result(make_broker):
    broker = make_broker()
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    first = broker.publish("t", "m1", enc({"v": 1}), idempotency_key="k1")
    again = broker.publish("t", "m1-retry", enc({"v": 2}), idempotency_key="k1")
    other = broker.publish("t", "m2", enc({"v": 3}), idempotency_key="k2")
    # A duplicate is told the first publish's id, seq and time; nothing is kept of its body.
    assert (again.seq, again.id, again.timestamp) == (first.seq, "m1", first.timestamp)
    assert other.seq == first.seq + 1
    marker = broker.publish("t", "m-marker", enc(None))  # in order: a resent k1 comes before it
    s.wait(lambda r: r.seqs()[-1:] == [marker.seq])
    assert s.seqs() == [1, 2, 3]
    broker.delete_topic("t")
    broker.create_topic("t")
    # A new stream: a new key space.
    fresh = broker.publish("t", "m3", enc(None), idempotency_key="k1")
    assert (fresh.seq, fresh.id) == (1, "m3")


def test_idempotency_keys_belong_to_one_publisher(make_broker):
    # One user cannot squat another's key: the same key from two publishers is two messages.
    broker = make_broker()
    broker.create_topic("t")
    mine = broker.publish("t", "a", enc(1), idempotency_key="k", publisher="alice")
    theirs = broker.publish("t", "b", enc(2), idempotency_key="k", publisher="mallory")
    again = broker.publish("t", "a2", enc(1), idempotency_key="k", publisher="alice")
    assert (mine.seq, theirs.seq, again.seq) == (1, 2, 1)


def test_idempotency_keys_do_not_collide_across_topic_names_with_colons(make_broker):
    # "a:b" + key "c" and "a" + key "b:c" once shared one Redis key.
    broker = make_broker()
    broker.create_topic("a:b")
    broker.create_topic("a")
    assert broker.publish("a:b", "1", enc(1), idempotency_key="c").seq == 1
    assert broker.publish("a", "1", enc(1), idempotency_key="b:c").seq == 1
    assert broker.publish("a", "2", enc(2), idempotency_key="b:c").seq == 1


def test_idempotency_keys_are_capped_per_topic(make_broker):
    broker = make_broker()
    broker.create_topic("t")
    for i in range(IDEMPOTENCY_KEYS_PER_TOPIC + 1):
        broker.publish("t", str(i), enc(i), idempotency_key=f"k{i}")
    seq = IDEMPOTENCY_KEYS_PER_TOPIC + 1
    # The newest key is remembered; the oldest was forgotten to make room.
    assert broker.publish("t", "x", enc(0), idempotency_key=f"k{seq - 1}").seq == seq
    assert broker.publish("t", "x", enc(0), idempotency_key="k0").seq == seq + 1


def test_history_holds_at_most_ring_bytes_oldest_out_first(make_broker):
    broker = make_broker(ring_size=100, ring_bytes=4096)
    broker.create_topic("t")
    big = enc("x" * 1000)
    for i in range(10):
        broker.publish("t", str(i), big)
    kept = broker.history("t").events
    assert 2 <= len(kept) <= 4, [e.seq for e in kept]
    # What stays is the newest, and contiguous: resume logic relies on it.
    assert [e.seq for e in kept] == list(range(11 - len(kept), 11))
    # A message larger than the budget empties the history rather than leaving a hole.
    broker.publish("t", "huge", enc("y" * 5000))
    assert broker.history("t").events == []
    assert broker.history("t", since_seq=9).complete is False
    broker.publish("t", "after", enc(1))
    assert [e.seq for e in broker.history("t").events] == [12]


def test_topic_quotas(make_broker):
    broker = make_broker(max_topics=3, max_topics_per_user=2)
    broker.create_topic("a1", owner="alice")
    broker.create_topic("a2", owner="alice")
    with pytest.raises(LimitExceeded, match="2 topics"):
        broker.create_topic("a3", owner="alice")
    broker.create_topic("b1", owner="bob")
    with pytest.raises(LimitExceeded, match="3 topics"):
        broker.create_topic("b2", owner="bob")
    # Deleting frees both quotas; the creator is recorded.
    broker.delete_topic("a1")
    broker.create_topic("a3", owner="alice")
    owners = {t.name: t.owner for t in broker.topics()}
    assert owners == {"a2": "alice", "a3": "alice", "b1": "bob"}


def test_connections_per_user_are_counted(make_broker):
    broker = make_broker()
    assert broker.claim_connection("alice", 2)
    assert broker.claim_connection("alice", 2)
    assert not broker.claim_connection("alice", 2)
    assert broker.claim_connection("bob", 2)
    broker.release_connection("alice")
    assert broker.claim_connection("alice", 2)
    # 0 is no limit.
    assert all(broker.claim_connection("carol", 0) for _ in range(50))


def test_a_last_n_beyond_any_integer_redis_takes_replays_the_whole_ring(make_broker):
    broker = make_broker(ring_size=3)
    broker.create_topic("t")
    for i in range(5):
        broker.publish("t", str(i), enc(i))
    replay = broker.subscribe("t", Recorder(), last_n=2**64 - 1).replay
    assert [e.seq for e in replay] == [3, 4, 5]


# Access: each topic keeps its owner, policies and members, and runs the caller's checks ----


class Refused(Exception):
    pass


def refuse(access: Access) -> None:
    raise Refused(access)


def test_a_topic_keeps_its_owner_policies_and_members(make_broker):
    broker = make_broker()
    broker.create_topic("t", owner="o", publish="owner", subscribe="members")
    broker.create_topic("open", owner="o")
    assert broker.access("t") == Access("o", "owner", "members", frozenset())
    assert broker.access("open") == Access("o", "anyone", "anyone", frozenset())
    broker.add_member("t", "m1")
    broker.add_member("t", "m1")  # idempotent
    broker.add_member("t", "m2")
    assert broker.access("t").members == {"m1", "m2"}
    broker.remove_member("t", "m2", revoke=False)
    broker.remove_member("t", "m2", revoke=False)  # idempotent
    assert broker.access("t").members == {"m1"}
    assert {i.name: i.access for i in broker.topics()}["t"] == broker.access("t")
    for call in (
        lambda: broker.access("nope"),
        lambda: broker.add_member("nope", "m1"),
        lambda: broker.remove_member("nope", "m1", revoke=True),
    ):
        with pytest.raises(TopicNotFound):
            call()
    # A topic created again under the same name starts with no members and its new policies.
    broker.delete_topic("t")
    broker.create_topic("t", owner="p")
    assert broker.access("t") == Access("p", "anyone", "anyone", frozenset())


def test_a_refused_check_changes_nothing(make_broker):
    broker = make_broker()
    broker.create_topic("t", owner="o", subscribe="members")
    broker.publish("t", "m1", enc(1))
    s = Recorder()
    seen = []
    with pytest.raises(Refused):
        broker.subscribe("t", s, last_n=5, check=refuse)
    assert broker.following(s) == frozenset() and broker.subscriber_count() == 0
    with pytest.raises(Refused):
        broker.publish("t", "m2", enc(2), check=refuse)
    with pytest.raises(Refused):
        broker.delete_topic("t", check=refuse)
    assert [(i.name, i.messages) for i in broker.topics()] == [("t", 1)]
    # A passing check sees the topic's access, and the operation happens.
    subscription = broker.subscribe("t", s, last_n=5, check=seen.append)
    assert [e.seq for e in subscription.replay] == [1]
    assert broker.publish("t", "m3", enc(3), check=seen.append).seq == 2
    broker.delete_topic("t", check=seen.append)
    assert seen == [Access("o", "anyone", "members", frozenset())] * 3


def test_removing_a_member_with_revoke_ends_their_subscriptions_only(make_broker):
    broker = make_broker()
    broker.create_topic("t", owner="o", subscribe="members")
    broker.add_member("t", "m")
    member, other_tab, owner = Recorder("m"), Recorder("m"), Recorder("o")
    for s in (member, other_tab, owner):
        broker.subscribe("t", s)
    broker.publish("t", "1", enc(1))
    member.wait(lambda r: r.seqs() == [1])
    broker.remove_member("t", "m", revoke=True)
    for s in (member, other_tab):
        s.wait(lambda r: r.revoked == ["t"])
    assert broker.following(member) == frozenset()
    broker.publish("t", "2", enc(2))
    owner.wait(lambda r: r.seqs() == [1, 2])
    assert member.seqs() == [1] and other_tab.seqs() == [1]
    assert owner.revoked == []
    # Without revoke (the member may still read, say under "anyone"), nothing ends.
    broker.add_member("t", "o2")
    reader = Recorder("o2")
    broker.subscribe("t", reader)
    broker.remove_member("t", "o2", revoke=False)
    broker.publish("t", "3", enc(3))
    reader.wait(lambda r: r.seqs() == [3])
    assert reader.revoked == []


def test_topic_names_with_colons_and_braces_never_share_state(make_broker):
    # Redis keys are "<prefix>:<kind>:<name>": names that look like other keys or hash tags
    # must still be topics of their own.
    broker = make_broker(ring_size=10)
    names = ["x", "ring:x", "seq:x", "x:ring", "{x}", "a:b{c}:d", "chan:x", "idem:1:x"]
    for name in names:
        broker.create_topic(name, owner="o")
    for count, name in enumerate(names, 1):
        for i in range(count):
            assert broker.publish(name, f"{name}-{i}", enc(i)).seq == i + 1
    for count, name in enumerate(names, 1):
        history = broker.history(name)
        assert [e.id for e in history.events] == [f"{name}-{i}" for i in range(count)], name
        s = Recorder()
        assert len(broker.subscribe(name, s, last_n=100).replay) == count
    assert {i.name: i.messages for i in broker.topics()} == {n: c for c, n in enumerate(names, 1)}
    broker.delete_topic("ring:x")
    assert broker.history("x").seq == 1  # "x" kept its own ring and seq


def test_creating_a_topic_while_others_publish_never_reuses_a_seq(make_broker):
    # Deleted and created again under publishing load: within each creation (epoch) the seqs
    # given out are 1, 2, 3... with no number given twice.
    broker = make_broker(ring_size=1000)
    broker.create_topic("t")
    stop = threading.Event()

    def publisher() -> None:
        while not stop.is_set():
            with contextlib.suppress(TopicNotFound):
                broker.publish("t", "m", enc(None))

    threads = [threading.Thread(target=publisher) for _ in range(3)]
    for thread in threads:
        thread.start()
    epochs = []
    try:
        for _ in range(20):
            broker.delete_topic("t")
            broker.create_topic("t")
            epochs.append(broker.history("t", limit=1000).epoch)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert len(set(epochs)) == len(epochs)
    last = broker.history("t", limit=1000)
    # The last creation's ring holds exactly 1..seq, each once.
    assert [e.seq for e in last.events] == list(range(1, last.seq + 1))


def test_publish_many_is_each_publish_in_order_each_failing_alone(make_broker):
    broker = make_broker(ring_size=10)
    broker.create_topic("a")
    broker.create_topic("b", owner="o", publish="owner")
    s = Recorder()
    broker.subscribe("a", s)
    broker.subscribe("b", s)
    results = broker.publish_many(
        [
            Publish("a", "m1", enc(1)),
            Publish("missing", "m2", enc(2)),
            Publish("b", "m3", enc(3), publisher="x", check=refuse),
            Publish("a", "m4", enc(4)),
            Publish("b", "m5", enc(5), publisher="o"),
            Publish("a", "m6", enc(6), check=lambda access: None),
        ]
    )
    ok = [r for r in results if isinstance(r, Event)]
    assert [(e.topic, e.id, e.seq) for e in ok] == [
        ("a", "m1", 1),
        ("a", "m4", 2),
        ("b", "m5", 1),
        ("a", "m6", 3),
    ]
    assert isinstance(results[1], TopicNotFound) and isinstance(results[2], Refused)
    s.wait(lambda s: len(s.events) == 4)
    assert [(e.topic, e.seq, loads(e.payload)) for e in s.events if e.topic == "a"] == [
        ("a", 1, 1),
        ("a", 2, 4),
        ("a", 3, 6),
    ]
    assert [e.id for e in broker.history("a").events] == ["m1", "m4", "m6"]
    assert broker.publish_many([]) == []


def test_publish_many_from_two_threads_never_shares_a_seq(make_broker):
    broker = make_broker(ring_size=1000)
    broker.create_topic("t")
    s = Recorder()
    broker.subscribe("t", s)
    got: list[int] = []

    def publisher(name: str) -> None:
        for batch in range(20):
            requests = [Publish("t", f"{name}{batch}.{i}", enc(i)) for i in range(10)]
            seqs = [e.seq for e in broker.publish_many(requests)]
            assert seqs == sorted(seqs)  # one batch's publishes get seqs in request order
            got.extend(seqs)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(got) == list(range(1, 401))
    s.wait(lambda s: len(s.events) == 400)
    assert s.seqs() == list(range(1, 401))
