"""Topics, /health and /stats over REST (docs/rest-api.md)."""

from __future__ import annotations

import urllib.parse

import orjson
import pytest

from gateway.state import get_broker


class RecordingSubscriber:
    """Stands in for a WebSocket connection subscribed through the broker."""

    def __init__(self) -> None:
        self.events = []
        self.deleted = []

    def deliver(self, event) -> None:
        self.events.append(event)

    def topic_deleted(self, topic: str) -> None:
        self.deleted.append(topic)


@pytest.fixture
def headers(auth_headers):
    """Bearer headers of one user registered for the test."""
    return auth_headers()


def create(client, headers, name):
    return client.post("/topics", json={"name": name}, headers=headers)


def publish(app, topic, count):
    with app.app_context():
        for n in range(count):
            get_broker().publish(topic, f"id{n}", orjson.dumps({"x": n}))


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]


# --- POST /topics ---------------------------------------------------------------------------


def test_create_topic_returns_201(client, headers):
    response = create(client, headers, "orders")
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "created"
    assert body["topic"] == "orders"


def test_create_existing_topic_is_409(client, headers):
    assert create(client, headers, "orders").status_code == 201
    assert_error(create(client, headers, "orders"), 409)
    assert [t["name"] for t in client.get("/topics", headers=headers).get_json()["topics"]] == [
        "orders"
    ]


def test_topic_names_are_case_sensitive(client, headers):
    assert create(client, headers, "Orders").status_code == 201
    assert create(client, headers, "orders").status_code == 201


@pytest.mark.parametrize(
    "name", ["a", "x" * 128, "a.b_c:d-e", "0", "Z9", "...", "::", "--", "sensor:42.temp-c"]
)
def test_create_accepts_valid_names(client, headers, name):
    response = create(client, headers, name)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["topic"] == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        "with space",
        "a/b",
        "/",
        "café",
        "名前",
        "a\nb",
        "tab\t",
        "a+b",
        "a#b",
        "a?b",
        "a%20b",
        "a*",
        "a@b",
        "a,b",
        " lead",
        "trail ",
    ],
)
def test_create_rejects_bad_names(client, headers, name):
    assert_error(create(client, headers, name), 400)
    assert client.get("/topics", headers=headers).get_json() == {"topics": []}


@pytest.mark.parametrize("name", [None, 5, 1.5, True, ["a"], {"n": "a"}])
def test_create_rejects_non_string_name(client, headers, name):
    assert_error(client.post("/topics", json={"name": name}, headers=headers), 400)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"topic": "a"}',
        b"not json",
        b"{",
        b'["a"]',
        b'"a"',
        b"null",
        b"7",
        b"\xff\xfe",
    ],
)
def test_create_rejects_bad_bodies(client, headers, data):
    assert_error(client.post("/topics", data=data, headers=headers), 400)


def test_create_accepts_json_without_content_type(client, headers):
    response = client.post("/topics", data='{"name": "raw"}', headers=headers)
    assert response.status_code == 201
    assert response.get_json()["topic"] == "raw"


def test_create_body_larger_than_max_message_bytes_is_rejected(make_app, auth_headers):
    app = make_app(MAX_MESSAGE_BYTES="1024")
    client = app.test_client()
    headers = auth_headers(client=client)
    response = client.post("/topics", json={"name": "big", "pad": "x" * 2000}, headers=headers)
    assert response.status_code in (400, 413)
    assert_error(response, response.status_code)
    assert client.get("/topics", headers=headers).get_json() == {"topics": []}


# --- GET /topics ----------------------------------------------------------------------------


def test_list_is_empty_when_there_are_no_topics(client, headers):
    response = client.get("/topics", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"topics": []}


def test_list_shows_names_and_subscriber_counts(app, client, headers):
    for name in ("alpha", "beta"):
        assert create(client, headers, name).status_code == 201
    with app.app_context():
        get_broker().subscribe("beta", RecordingSubscriber())
        get_broker().subscribe("beta", RecordingSubscriber())
    response = client.get("/topics", headers=headers)
    assert response.status_code == 200
    topics = response.get_json()["topics"]
    assert all(set(t) >= {"name", "subscribers"} for t in topics)
    assert {t["name"]: t["subscribers"] for t in topics} == {"alpha": 0, "beta": 2}


# --- DELETE /topics/<name> ------------------------------------------------------------------


def test_delete_topic_then_delete_again_is_404(client, headers):
    assert create(client, headers, "temp").status_code == 201
    response = client.delete("/topics/temp", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "deleted"
    assert body["topic"] == "temp"
    assert client.get("/topics", headers=headers).get_json() == {"topics": []}
    assert_error(client.delete("/topics/temp", headers=headers), 404)


def test_delete_unknown_topic_is_404(client, headers):
    assert_error(client.delete("/topics/never-made", headers=headers), 404)


def test_delete_tells_subscribers_and_drops_their_subscription(app, client, headers):
    assert create(client, headers, "live").status_code == 201
    subscriber = RecordingSubscriber()
    with app.app_context():
        get_broker().subscribe("live", subscriber)
    assert client.get("/health").get_json()["subscribers"] == 1
    assert client.delete("/topics/live", headers=headers).status_code == 200
    assert subscriber.deleted == ["live"]
    assert client.get("/health").get_json()["subscribers"] == 0


def test_delete_then_create_again_works(client, headers):
    assert create(client, headers, "again").status_code == 201
    assert client.delete("/topics/again", headers=headers).status_code == 200
    assert create(client, headers, "again").status_code == 201


# --- auth on topic routes -------------------------------------------------------------------


def test_topic_routes_require_a_token(client, headers):
    assert create(client, headers, "guarded").status_code == 201
    assert_error(client.post("/topics", json={"name": "nope"}), 401)
    assert_error(client.get("/topics"), 401)
    assert_error(client.delete("/topics/guarded"), 401)
    # Nothing changed without a token.
    names = [t["name"] for t in client.get("/topics", headers=headers).get_json()["topics"]]
    assert names == ["guarded"]


def test_only_the_owner_deletes_a_topic(client, auth_headers):
    first, second = auth_headers(), auth_headers()
    assert create(client, first, "shared").status_code == 201
    assert_error(create(client, second, "shared"), 409)
    assert_error(client.delete("/topics/shared", headers=second), 403)
    assert client.delete("/topics/shared", headers=first).status_code == 200


# --- /health and /stats ---------------------------------------------------------------------


def test_health_needs_no_token_and_counts_topics(client, headers):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) >= {"uptime_sec", "topics", "subscribers"}
    assert type(body["uptime_sec"]) is int and body["uptime_sec"] >= 0
    assert body["topics"] == 0 and body["subscribers"] == 0
    create(client, headers, "h1")
    create(client, headers, "h2")
    assert client.get("/health").get_json()["topics"] == 2
    client.delete("/topics/h1", headers=headers)
    assert client.get("/health").get_json()["topics"] == 1


def test_health_counts_topic_subscriptions(app, client, headers):
    create(client, headers, "h1")
    create(client, headers, "h2")
    one, two = RecordingSubscriber(), RecordingSubscriber()
    with app.app_context():
        broker = get_broker()
        broker.subscribe("h1", one)
        broker.subscribe("h2", one)
        broker.subscribe("h2", two)
    body = client.get("/health").get_json()
    assert type(body["subscribers"]) is int
    assert body["subscribers"] == 3
    with app.app_context():
        get_broker().unsubscribe("h2", two)
    assert client.get("/health").get_json()["subscribers"] == 2


def test_stats_needs_no_token_and_is_empty_without_topics(client):
    response = client.get("/stats")
    assert response.status_code == 200
    assert response.get_json() == {"topics": {}}


def test_stats_counts_messages_and_subscribers_per_topic(app, client, headers):
    create(client, headers, "busy")
    create(client, headers, "quiet")
    subscriber = RecordingSubscriber()
    with app.app_context():
        get_broker().subscribe("busy", subscriber)
    publish(app, "busy", 2)
    topics = client.get("/stats").get_json()["topics"]
    assert set(topics) == {"busy", "quiet"}
    assert (topics["busy"]["messages"], topics["busy"]["subscribers"]) == (2, 1)
    assert (topics["quiet"]["messages"], topics["quiet"]["subscribers"]) == (0, 0)
    assert all(type(t[k]) is int for t in topics.values() for k in ("messages", "subscribers"))
    assert [orjson.loads(e.payload) for e in subscriber.events] == [{"x": 0}, {"x": 1}]


def test_stats_messages_are_not_capped_by_the_ring(make_app, auth_headers):
    app = make_app(RING_BUFFER_SIZE="3")
    client = app.test_client()
    headers = auth_headers(client=client)
    create(client, headers, "ring")
    publish(app, "ring", 5)
    assert client.get("/stats").get_json()["topics"]["ring"]["messages"] == 5


def test_recreated_topic_starts_at_zero_messages(app, client, headers):
    create(client, headers, "phoenix")
    publish(app, "phoenix", 4)
    assert client.get("/stats").get_json()["topics"]["phoenix"]["messages"] == 4
    client.delete("/topics/phoenix", headers=headers)
    assert "phoenix" not in client.get("/stats").get_json()["topics"]
    assert create(client, headers, "phoenix").status_code == 201
    reborn = client.get("/stats").get_json()["topics"]["phoenix"]
    assert (reborn["messages"], reborn["subscribers"]) == (0, 0)


def test_every_json_reply_ends_with_a_newline(client, auth_headers):
    # curl prints the body as it is: without the newline the shell prompt joins the JSON.
    headers = auth_headers()
    replies = [
        client.post("/topics", json={"name": "nl"}, headers=headers),  # 201
        client.get("/topics", headers=headers),  # 200
        client.get("/health"),
        client.post("/topics", json={"name": "nl"}, headers=headers),  # 409, an error
        client.get("/nope"),  # 404 from Flask itself
    ]
    for reply in replies:
        assert reply.mimetype == "application/json", reply.status
        assert reply.data.endswith(b"}\n"), (reply.status, reply.data[-20:])


@pytest.mark.parametrize(
    "username", ["nobody", "a" * 300, "ünï", "line\nbreak", "%00", "x/../y", "' OR 1=1 --"]
)
def test_a_hostile_member_name_gets_a_clear_404(client, headers, username):
    create(client, headers, "guarded")
    for method in ("put", "delete"):
        reply = getattr(client, method)(
            f"/topics/guarded/members/{urllib.parse.quote(username, safe='')}", headers=headers
        )
        assert_error(reply, 404)
    assert client.get("/topics/guarded/members", headers=headers).get_json()["members"]
