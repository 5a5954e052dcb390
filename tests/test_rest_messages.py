"""Messages over HTTP: publish, history and the SSE stream, through Flask's test client."""

from __future__ import annotations

import json
import re
import threading

import orjson
import pytest

from gateway import protocol
from gateway.brokers import BrokerUnavailable, Event, Subscription
from gateway.state import get_broker, get_registry
from gateway.transport.sse import SseStream

PUBLISHED_ID = re.compile(r"^[0-9a-f]{32}$")


def as_json(message: dict) -> dict:
    """Return a message shape as a client reads it (its payload is pre-encoded JSON)."""
    return orjson.loads(orjson.dumps(message))


class RecordingSubscriber:
    """Stands in for a WebSocket connection subscribed through the broker."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def topic_deleted(self, topic: str) -> None:
        pass


@pytest.fixture
def headers(auth_headers):
    """Bearer headers of one user registered for the test."""
    return auth_headers()


@pytest.fixture
def topic(client, headers):
    """A topic created for the test."""
    assert client.post("/topics", json={"name": "orders"}, headers=headers).status_code == 201
    return "orders"


def publish(client, headers, topic, body=None, key=None, **kwargs):
    extra = {} if key is None else {"Idempotency-Key": key}
    if body is None:
        body = {"payload": {"n": 1}}
    return client.post(f"/topics/{topic}/messages", json=body, headers=headers | extra, **kwargs)


def publish_many(client, headers, topic, count):
    seqs = []
    for n in range(count):
        response = publish(client, headers, topic, {"id": f"m{n}", "payload": {"n": n}})
        assert response.status_code == 201, response.get_data(as_text=True)
        seqs.append(response.get_json()["seq"])
    return seqs


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]


def subscribers(client) -> int:
    return client.get("/health").get_json()["subscribers"]


# --- POST /topics/<name>/messages ------------------------------------------------------------


def test_publish_returns_201_with_topic_id_seq_and_timestamp(client, headers, topic):
    response = publish(client, headers, topic, {"id": "m1", "payload": {"order": 7}})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"topic", "id", "seq", "timestamp"}
    assert (body["topic"], body["id"], body["seq"]) == (topic, "m1", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
    assert publish(client, headers, topic).get_json()["seq"] == 2


@pytest.mark.parametrize("body", [{"payload": 1}, {"id": None, "payload": 1}])
def test_publish_without_id_gets_a_uuid4_hex(client, headers, topic, body):
    first = publish(client, headers, topic, body).get_json()["id"]
    second = publish(client, headers, topic, body).get_json()["id"]
    assert PUBLISHED_ID.match(first) and PUBLISHED_ID.match(second)
    assert first != second


def test_http_publish_is_delivered_like_a_websocket_publish(app, client, headers, topic):
    subscriber = RecordingSubscriber()
    with app.app_context():
        get_broker().subscribe(topic, subscriber)
    body = publish(client, headers, topic, {"id": "m1", "payload": [1, "two", None]}).get_json()
    [event] = subscriber.events
    assert (event.topic, event.id, orjson.loads(event.payload), event.seq) == (
        topic,
        "m1",
        [1, "two", None],
        1,
    )
    assert protocol.iso(event.timestamp) == body["timestamp"]
    frame = json.loads(event.wire[event.wire.index(b"{") :])  # past the frame header
    assert frame["message"] == as_json(protocol.message(event))


def test_payload_may_be_null_and_content_type_is_not_needed(client, headers, topic):
    response = client.post(f"/topics/{topic}/messages", data=b'{"payload": null}', headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)


def test_idempotency_key_makes_retries_return_the_first_result(app, client, headers, topic):
    subscriber = RecordingSubscriber()
    with app.app_context():
        get_broker().subscribe(topic, subscriber)
    bodies = [
        publish(client, headers, topic, {"payload": n}, key="order-7-created").get_json()
        for n in range(3)
    ]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["seq"] == 1 and PUBLISHED_ID.match(bodies[0]["id"])
    assert [orjson.loads(e.payload) for e in subscriber.events] == [0]
    assert client.get("/stats").get_json()["topics"][topic]["messages"] == 1
    other = publish(client, headers, topic, {"payload": 9}, key="order-7-shipped").get_json()
    assert other["seq"] == 2
    history = client.get(f"/topics/{topic}/messages", headers=headers).get_json()
    assert [m["payload"] for m in history["messages"]] == [0, 9]


def test_idempotency_keys_belong_to_one_topic(client, headers, topic):
    assert client.post("/topics", json={"name": "other"}, headers=headers).status_code == 201
    publish_many(client, headers, "other", 2)
    here = publish(client, headers, topic, key="k").get_json()
    there = publish(client, headers, "other", key="k").get_json()
    assert (here["topic"], here["seq"]) == (topic, 1)
    assert (there["topic"], there["seq"]) == ("other", 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"{}",
        b'{"id": "m1"}',
        b'{"id": "", "payload": 1}',
        b'{"id": 5, "payload": 1}',
        b'{"id": ["m"], "payload": 1}',
    ],
)
def test_bad_publish_bodies_are_400(client, headers, topic, data):
    assert_error(client.post(f"/topics/{topic}/messages", data=data, headers=headers), 400)


@pytest.mark.parametrize("key", ["", " ", "k" * 256, "caf\u00e9", "two words"])
def test_bad_idempotency_keys_are_400(client, headers, topic, key):
    assert_error(publish(client, headers, topic, key=key), 400)


def test_publish_errors(make_app, client, headers, topic, auth_headers):
    assert_error(publish(client, headers, "missing"), 404)
    assert_error(publish(client, headers, "bad name!"), 400)
    assert_error(client.post(f"/topics/{topic}/messages", json={"payload": 1}), 401)
    small = make_app(MAX_MESSAGE_BYTES="64")
    small_client = small.test_client()
    small_headers = auth_headers(client=small_client)
    small_client.post("/topics", json={"name": topic}, headers=small_headers)
    response = publish(small_client, small_headers, topic, {"payload": "x" * 100})
    assert response.status_code in (400, 413)
    assert client.get("/stats").get_json()["topics"][topic]["messages"] == 0


def test_the_broker_down_is_503_everywhere(app, client, headers, topic, monkeypatch):
    def down(*args, **kwargs):
        raise BrokerUnavailable("connection refused")

    with app.app_context():
        for method in ("publish", "history", "subscribe"):
            monkeypatch.setattr(get_broker(), method, down)
    assert_error(publish(client, headers, topic), 503)
    assert_error(client.get(f"/topics/{topic}/messages", headers=headers), 503)
    assert_error(client.get(f"/topics/{topic}/events", headers=headers), 503)
    with app.app_context():
        assert get_registry().count() == 0


# --- GET /topics/<name>/messages -------------------------------------------------------------


def history(client, headers, topic, query=""):
    return client.get(f"/topics/{topic}/messages{query}", headers=headers)


def test_history_returns_ring_messages_oldest_first_in_the_event_shape(app, client, headers, topic):
    subscriber = RecordingSubscriber()
    with app.app_context():
        get_broker().subscribe(topic, subscriber)
    publish_many(client, headers, topic, 3)
    response = history(client, headers, topic)
    assert response.status_code == 200
    body = response.get_json()
    assert {"topic", "seq", "epoch", "complete", "messages"} <= set(body)
    assert (body["topic"], body["seq"], body["complete"]) == (topic, 3, True)
    assert isinstance(body["epoch"], str) and body["epoch"]
    assert body["messages"] == [as_json(protocol.message(e)) for e in subscriber.events]
    assert [m["seq"] for m in body["messages"]] == [1, 2, 3]


def test_history_of_an_empty_topic(client, headers, topic):
    body = history(client, headers, topic).get_json()
    assert (body["messages"], body["seq"], body["complete"]) == ([], 0, True)


def test_history_since_seq_and_limit(client, headers, topic):
    publish_many(client, headers, topic, 6)
    body = history(client, headers, topic, "?since_seq=2&limit=3").get_json()
    assert [m["seq"] for m in body["messages"]] == [3, 4, 5]
    assert (body["seq"], body["complete"]) == (6, True)
    body = history(client, headers, topic, "?since_seq=6").get_json()
    assert (body["messages"], body["complete"]) == ([], True)
    body = history(client, headers, topic, "?limit=1000").get_json()
    assert len(body["messages"]) == 6


def test_history_says_incomplete_when_the_ring_lost_messages(make_app, auth_headers):
    client = make_app(RING_BUFFER_SIZE="3").test_client()
    headers = auth_headers(client=client)
    client.post("/topics", json={"name": "orders"}, headers=headers)
    publish_many(client, headers, "orders", 5)
    body = history(client, headers, "orders").get_json()
    assert [m["seq"] for m in body["messages"]] == [3, 4, 5]
    assert body["complete"] is False
    body = history(client, headers, "orders", "?since_seq=1").get_json()
    assert ([m["seq"] for m in body["messages"]], body["complete"]) == ([3, 4, 5], False)
    body = history(client, headers, "orders", "?since_seq=2").get_json()
    assert ([m["seq"] for m in body["messages"]], body["complete"]) == ([3, 4, 5], True)


def test_history_from_another_epoch_is_incomplete(client, headers, topic):
    publish_many(client, headers, topic, 2)
    old_epoch = history(client, headers, topic).get_json()["epoch"]
    client.delete(f"/topics/{topic}", headers=headers)
    client.post("/topics", json={"name": topic}, headers=headers)
    publish_many(client, headers, topic, 3)
    body = history(client, headers, topic, f"?since_seq=2&epoch={old_epoch}").get_json()
    assert body["epoch"] != old_epoch
    assert ([m["seq"] for m in body["messages"]], body["complete"]) == ([1, 2, 3], False)


@pytest.mark.parametrize(
    "query",
    [
        "?since_seq=-1",
        "?since_seq=abc",
        "?since_seq=",
        "?since_seq=1.5",
        "?since_seq=" + "9" * 30,
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?limit=",
        "?limit=-5",
    ],
)
def test_bad_history_parameters_are_400(client, headers, topic, query):
    assert_error(history(client, headers, topic, query), 400)


def test_history_errors(client, headers, topic):
    assert_error(history(client, headers, "missing"), 404)
    assert_error(history(client, headers, "bad name!"), 400)
    assert_error(client.get(f"/topics/{topic}/messages"), 401)


# --- GET /topics/<name>/events (SSE) ---------------------------------------------------------


def parse(chunk: bytes) -> list[dict]:
    """Split SSE bytes into events ({"id"?, "event", "data"}) and comments ({"comment"})."""
    items = []
    for block in chunk.decode().split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            items.append({"comment": block[1:].strip()})
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        item = {"event": fields["event"], "data": json.loads(fields["data"])}
        if "id" in fields:
            item["id"] = int(fields["id"])
        items.append(item)
    return items


class Stream:
    """A streamed SSE response whose every read has a timeout."""

    def __init__(self, response) -> None:
        self.response = response
        self.chunks = iter(response.response)
        self.backlog: list[dict] = []

    def next_chunk(self, timeout: float = 5.0) -> bytes | None:
        """The next chunk the generator yields, or None at the end of the stream."""
        box: dict = {}

        def read():
            try:
                box["chunk"] = next(self.chunks, None)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                box["error"] = exc

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        assert not reader.is_alive(), f"no SSE chunk within {timeout}s"
        if "error" in box:
            raise box["error"]
        return box["chunk"]

    def next_items(self, timeout: float = 5.0) -> list[dict]:
        """What is left of the last chunk read, else everything in the next chunk."""
        if self.backlog:
            items, self.backlog = self.backlog, []
            return items
        chunk = self.next_chunk(timeout)
        assert chunk is not None, "the stream ended"
        return parse(chunk)

    def next_item(self, timeout: float = 5.0) -> dict:
        if not self.backlog:
            self.backlog = self.next_items(timeout)
        return self.backlog.pop(0)

    def messages(self, count: int) -> list[dict]:
        items = [self.next_item() for _ in range(count)]
        assert all(i["event"] == "message" for i in items), items
        return items

    def close(self) -> None:
        self.response.close()


def open_stream(client, topic, headers=None, query="", expect=200) -> Stream:
    response = client.get(f"/topics/{topic}/events{query}", headers=headers, buffered=False)
    assert response.status_code == expect, response.get_data(as_text=True)
    return Stream(response)


def test_sse_answers_an_event_stream_that_starts_with_subscribed(client, headers, topic):
    publish_many(client, headers, topic, 2)
    stream = open_stream(client, topic, headers)
    response = stream.response
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    subscribed = stream.next_item()
    assert subscribed["event"] == "subscribed"
    data = subscribed["data"]
    assert set(data) == {"topic", "seq", "epoch", "recovered"}
    assert (data["topic"], data["seq"], data["recovered"]) == (topic, 2, False)
    # A fresh stream's id lets a reconnecting browser resume from the subscription.
    assert subscribed["id"] == 2
    stream.close()


def test_sse_streams_live_messages_with_their_seq_as_id(app, client, headers, topic):
    stream = open_stream(client, topic, headers)
    stream.next_item()
    subscriber = RecordingSubscriber()
    with app.app_context():
        get_broker().subscribe(topic, subscriber)
    publish_many(client, headers, topic, 3)
    items = stream.messages(3)
    assert [i["id"] for i in items] == [1, 2, 3]
    assert [i["data"] for i in items] == [as_json(protocol.message(e)) for e in subscriber.events]
    stream.close()


def test_sse_resumes_after_last_event_id_with_no_gap_or_duplicate(client, headers, topic):
    publish_many(client, headers, topic, 5)
    stream = open_stream(client, topic, headers | {"Last-Event-ID": "3"})
    subscribed = stream.next_item()
    assert subscribed["data"]["recovered"] is True and subscribed["data"]["seq"] == 5
    assert "id" not in subscribed  # the browser keeps the Last-Event-ID it resumed from
    assert [i["id"] for i in stream.messages(2)] == [4, 5]
    publish_many(client, headers, topic, 1)
    assert [i["id"] for i in stream.messages(1)] == [6]
    stream.close()


def test_sse_since_seq_query_resumes_and_last_event_id_wins(client, headers, topic):
    publish_many(client, headers, topic, 4)
    stream = open_stream(client, topic, headers, "?since_seq=1")
    stream.next_item()
    assert [i["id"] for i in stream.messages(3)] == [2, 3, 4]
    stream.close()
    stream = open_stream(client, topic, headers | {"Last-Event-ID": "3"}, "?since_seq=1")
    stream.next_item()
    assert [i["id"] for i in stream.messages(1)] == [4]
    stream.close()


def test_sse_resume_past_the_ring_is_not_recovered(make_app, auth_headers):
    client = make_app(RING_BUFFER_SIZE="3").test_client()
    headers = auth_headers(client=client)
    client.post("/topics", json={"name": "orders"}, headers=headers)
    publish_many(client, headers, "orders", 6)
    stream = open_stream(client, "orders", headers | {"Last-Event-ID": "1"})
    subscribed = stream.next_item()
    assert subscribed["data"]["recovered"] is False
    assert [i["id"] for i in stream.messages(3)] == [4, 5, 6]
    stream.close()


def test_sse_full_queue_drops_oldest_and_says_so_before_the_next_message(make_app, auth_headers):
    client = make_app(SUBSCRIBER_QUEUE_SIZE="2").test_client()
    headers = auth_headers(client=client)
    client.post("/topics", json={"name": "orders"}, headers=headers)
    stream = open_stream(client, "orders", headers)
    stream.next_item()
    publish_many(client, headers, "orders", 5)  # nobody reads meanwhile: publishers never wait
    items = stream.next_items()
    assert items[0] == {
        "event": "dropped",
        "data": {"topic": "orders", "count": 3, "from_seq": 1, "to_seq": 3},
    }
    assert [i["id"] for i in items[1:]] == [4, 5]
    publish_many(client, headers, "orders", 1)
    assert [i.get("id") for i in stream.next_items()] == [6]  # no second notice
    stream.close()


def test_sse_replay_is_not_subject_to_the_queue_bound(make_app, auth_headers):
    client = make_app(SUBSCRIBER_QUEUE_SIZE="2").test_client()
    headers = auth_headers(client=client)
    client.post("/topics", json={"name": "orders"}, headers=headers)
    publish_many(client, headers, "orders", 5)
    stream = open_stream(client, "orders", headers, "?since_seq=0")
    items = stream.next_items()
    assert [(i["event"], i.get("id")) for i in items[1:]] == [("message", n) for n in range(1, 6)]
    stream.close()


def test_sse_topic_deletion_ends_the_stream_after_queued_messages(client, headers, topic):
    stream = open_stream(client, topic, headers)
    stream.next_item()
    publish_many(client, headers, topic, 1)
    assert client.delete(f"/topics/{topic}", headers=headers).status_code == 200
    items = []
    while (chunk := stream.next_chunk()) is not None:
        items += parse(chunk)
    assert [(i["event"], i.get("id")) for i in items] == [("message", 1), ("topic_deleted", None)]
    assert items[-1]["data"] == {"topic": topic}
    assert subscribers(client) == 0


def test_hub_shutdown_ends_the_stream_with_shutdown(make_app, auth_headers):
    app = make_app(SHUTDOWN_GRACE_SECONDS="5")
    client = app.test_client()
    headers = auth_headers(client=client)
    client.post("/topics", json={"name": "orders"}, headers=headers)
    stream = open_stream(client, "orders", headers)
    stream.next_item()
    with app.app_context():
        registry = get_registry()
    assert registry.count() == 1
    stopper = threading.Thread(target=registry.shutdown, daemon=True)
    stopper.start()
    items = stream.next_items()
    assert items == [{"event": "shutdown", "data": {"topic": "orders"}}]
    assert stream.next_chunk() is None
    stopper.join(5)
    assert not stopper.is_alive() and registry.count() == 0


def test_sse_sends_heartbeat_comments(make_app, auth_headers):
    client = make_app(HEARTBEAT_INTERVAL="1").test_client()
    headers = auth_headers(client=client)
    client.post("/topics", json={"name": "orders"}, headers=headers)
    stream = open_stream(client, "orders", headers)
    stream.next_item()
    assert stream.next_chunk(timeout=3) == b": ping\n\n"
    stream.close()


def test_closing_the_stream_unsubscribes(client, headers, topic):
    stream = open_stream(client, topic, headers)
    assert subscribers(client) == 1
    stream.close()  # before the first chunk was read: the generator never ran
    assert subscribers(client) == 0
    stream = open_stream(client, topic, headers)
    stream.next_item()
    stream.close()
    assert subscribers(client) == 0
    assert client.get("/stats").get_json()["topics"][topic]["subscribers"] == 0


def test_sse_takes_the_token_from_the_query(client, headers, topic):
    token = headers["Authorization"].removeprefix("Bearer ")
    stream = open_stream(client, topic, query=f"?token={token}")
    assert stream.next_item()["event"] == "subscribed"
    stream.close()


@pytest.mark.parametrize(
    ("query", "extra", "status"),
    [
        ("", {"Last-Event-ID": "x"}, 400),
        ("", {"Last-Event-ID": "-1"}, 400),
        ("?since_seq=abc", {}, 400),
        ("?token=nope", None, 401),
        ("", None, 401),
    ],
)
def test_sse_refusals(client, headers, topic, query, extra, status):
    sent = None if extra is None else headers | extra
    assert_error(client.get(f"/topics/{topic}/events{query}", headers=sent), status)
    assert subscribers(client) == 0


def test_sse_unknown_topic_is_404_and_leaves_nothing_behind(app, client, headers):
    assert_error(client.get("/topics/missing/events", headers=headers), 404)
    assert_error(client.get("/topics/bad%20name/events", headers=headers), 400)
    with app.app_context():
        assert get_registry().count() == 0


# --- the seam, with a broker that hands over events while subscribe runs ----------------------


class RacingBroker:
    """A broker whose subscribe delivers live events before it returns, as transports may."""

    def __init__(self) -> None:
        self.unsubscribed = []

    def subscribe(self, topic, subscriber, last_n=0, since_seq=None, epoch=None, check=None):
        def event(seq):
            return Event(topic, f"m{seq}", b"%d" % seq, seq, 0.0)

        for seq in (2, 3, 4):  # 2 and 3 are in the replay too; 4 came after the snapshot
            subscriber.deliver(event(seq))
        return Subscription([event(1), event(2), event(3)], 3, "e1", True)

    def unsubscribe_all(self, subscriber):
        self.unsubscribed.append(subscriber)


def test_events_delivered_during_subscribe_follow_the_replay_once():
    broker = RacingBroker()
    stream = SseStream(broker, "orders", queue_size=10, heartbeat_interval=0)
    stream.subscribe(since_seq=0, epoch=None)
    frames = stream.frames()
    items = parse(next(frames)) + parse(next(frames))
    assert items[0]["event"] == "subscribed"
    assert [i["id"] for i in items[1:]] == [1, 2, 3, 4]
    frames.close()
    assert broker.unsubscribed == [stream]
