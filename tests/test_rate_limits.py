"""Rate limits (docs/configuration.md "Limits"): logins per IP and per username, HTTP publishes per user,
shared through Redis, and the WebSocket's token bucket.

Windows are a minute or longer, so a slow machine cannot see a window end mid-test; the
token bucket runs on a fake clock.
"""

from __future__ import annotations

import logging

import pytest
from redis_server import RedisServer

from gateway.config import Rate
from gateway.guards.rates import TokenBucket
from gateway.state import get_broker

PASSWORD = "correct horse battery"
WRONG = "not the password"


@pytest.fixture
def gateway_log():
    """Collect the records of the gateway's loggers (they do not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def login(client, username, password=WRONG, ip="10.0.0.1"):
    return client.post(
        "/users/login",
        json={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )


def register(client, username, ip="10.0.0.1"):
    return client.post(
        "/users/register",
        json={"username": username, "password": PASSWORD},
        environ_base={"REMOTE_ADDR": ip},
    )


def assert_rate_limited(response, period: int) -> str:
    """Check the 429 shape and return its error text."""
    assert response.status_code == 429, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == "RATE_LIMITED", body
    assert isinstance(body["error"], str) and "retry in" in body["error"], body
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= period, retry_after
    assert f"retry in {retry_after} s" in body["error"], body
    return body["error"]


# ---------------------------------------------------------------------------------------------
# Logins and registrations


def test_login_limit_per_ip_counts_wrong_passwords_and_refuses_the_next(make_app, gateway_log):
    client = make_app(LOGIN_RATE_LIMIT="3/minute").test_client()
    assert register(client, "carol", ip="10.0.0.9").status_code == 201
    for name in ("u1", "u2", "u3"):  # three usernames: only the address's budget runs out
        assert login(client, name).status_code == 401

    refused = login(client, "carol", PASSWORD)  # the right password does not help
    error = assert_rate_limited(refused, 60)
    assert "address" in error
    assert "token" not in refused.get_json()
    # Another address still logs carol in: the refusal was about 10.0.0.1, not carol.
    assert login(client, "carol", PASSWORD, ip="10.0.0.2").status_code == 200

    lines = [r.getMessage() for r in gateway_log if r.getMessage().startswith("rate_limited")]
    assert len(lines) == 1, lines
    assert "scope=login key=ip ip=10.0.0.1 username='carol'" in lines[0], lines
    assert PASSWORD not in "\n".join(r.getMessage() for r in gateway_log)


def test_login_limit_per_username_holds_across_addresses(make_app):
    client = make_app(LOGIN_RATE_LIMIT="3/minute").test_client()
    for i in range(3):
        assert login(client, "dave", ip=f"10.0.1.{i}").status_code == 401

    error = assert_rate_limited(login(client, "dave", ip="10.0.1.9"), 60)
    assert "username" in error
    # The fresh address has its own budget for other usernames.
    assert login(client, "erin", ip="10.0.1.9").status_code == 401


def test_register_and_login_share_the_budget(make_app):
    client = make_app(LOGIN_RATE_LIMIT="2/minute").test_client()
    assert register(client, "frank").status_code == 201
    assert register(client, "grace").status_code == 201
    assert_rate_limited(register(client, "heidi"), 60)
    assert_rate_limited(login(client, "frank", PASSWORD), 60)
    # heidi was refused before the account was made.
    assert register(client, "heidi", ip="10.0.0.2").status_code == 201


def test_bodies_without_a_string_username_count_per_address_only(make_app):
    client = make_app(LOGIN_RATE_LIMIT="2/minute").test_client()
    for ip in ("10.0.2.1", "10.0.2.2", "10.0.2.3"):
        response = client.post(
            "/users/login",
            json={"username": 7, "password": WRONG},
            environ_base={"REMOTE_ADDR": ip},
        )
        assert response.status_code == 400
    # Not JSON at all: the address's budget is still spent, before the body is looked at.
    for _ in range(2):
        response = client.post(
            "/users/login", data=b"{nope", environ_base={"REMOTE_ADDR": "10.0.2.4"}
        )
        assert response.status_code == 400
    assert_rate_limited(login(client, "ivan", ip="10.0.2.4"), 60)


def test_zero_turns_the_login_limit_off(make_app):
    client = make_app(LOGIN_RATE_LIMIT="0").test_client()
    statuses = [login(client, "judy").status_code for _ in range(4)]
    assert statuses == [401] * 4


# ---------------------------------------------------------------------------------------------
# HTTP publish


def publish(client, headers, topic, payload):
    return client.post(f"/topics/{topic}/messages", json={"payload": payload}, headers=headers)


def test_http_publish_limit_is_per_user_and_spends_no_seq(make_app, make_user):
    client = make_app(PUBLISH_RATE_LIMIT="2/minute").test_client()
    alice = {"Authorization": f"Bearer {make_user('alice', client=client)}"}
    bob = {"Authorization": f"Bearer {make_user('bob', client=client)}"}
    assert client.post("/topics", json={"name": "orders"}, headers=alice).status_code == 201

    seqs = [publish(client, alice, "orders", n).get_json()["seq"] for n in (1, 2)]
    error = assert_rate_limited(publish(client, alice, "orders", 3), 60)
    assert "2/minute" in error
    # bob has a budget of his own, and alice's refusal used no seq.
    seqs += [publish(client, bob, "orders", n).get_json()["seq"] for n in (4, 5)]
    assert seqs == [1, 2, 3, 4]
    assert_rate_limited(publish(client, bob, "orders", 6), 60)
    # The token is checked first: no token is a 401, not a refusal by the limit.
    assert client.post("/topics/orders/messages", json={"payload": 1}).status_code == 401


def test_zero_turns_the_publish_limit_off(make_app, make_user):
    client = make_app(PUBLISH_RATE_LIMIT="0").test_client()
    headers = {"Authorization": f"Bearer {make_user(client=client)}"}
    assert client.post("/topics", json={"name": "t"}, headers=headers).status_code == 201
    statuses = {publish(client, headers, "t", n).status_code for n in range(150)}
    assert statuses == {201}


# ---------------------------------------------------------------------------------------------
# Shared through Redis, and what a Redis outage does


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def redis_apps(make_app, redis_server):
    """Build apps on the test's redis-server (two apps stand for two workers or hosts)."""
    apps = []

    def make(**settings: str):
        app = make_app(BROKER_URL=redis_server.url, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            get_broker().close()


def test_login_counters_are_shared_through_redis(redis_apps):
    a = redis_apps(LOGIN_RATE_LIMIT="3/minute").test_client()
    b = redis_apps(LOGIN_RATE_LIMIT="3/minute").test_client()
    assert login(a, "kim", ip="10.0.3.1").status_code == 401
    assert login(b, "kim", ip="10.0.3.2").status_code == 401
    assert login(a, "kim", ip="10.0.3.3").status_code == 401
    assert_rate_limited(login(b, "kim", ip="10.0.3.4"), 60)
    assert_rate_limited(login(a, "kim", ip="10.0.3.5"), 60)


def test_redis_outage_keeps_logins_working_and_limited_in_memory(
    redis_apps, redis_server, gateway_log
):
    client = redis_apps(LOGIN_RATE_LIMIT="2/minute").test_client()
    assert login(client, "leo", ip="10.0.4.1").status_code == 401
    redis_server.stop()

    # No 500: the worker counts in memory until Redis is back, so the limit still holds.
    statuses = [login(client, "leo", ip="10.0.4.2").status_code for _ in range(3)]
    assert statuses[:2] == [401, 401], statuses
    assert statuses[2] == 429, statuses
    messages = [r.getMessage() for r in gateway_log]
    assert any("falling back to in-memory storage" in m for m in messages), messages


# ---------------------------------------------------------------------------------------------
# TokenBucket (one per WebSocket connection)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_says_how_long_to_wait():
    clock = FakeClock()
    bucket = TokenBucket(Rate(3, "second"), clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(1 / 3)
    clock.now += 0.2
    assert bucket.take() == pytest.approx(1 / 3 - 0.2)  # a refusal spends nothing


def test_token_bucket_refills_at_the_rate_up_to_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(Rate(10, "minute"), clock)
    for _ in range(10):
        assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(6.0)
    clock.now += 6.0
    assert bucket.take() == 0.0
    assert bucket.take() > 0.0
    clock.now += 3600  # an idle hour earns no more than the burst
    assert [bucket.take() for _ in range(10)] == [0.0] * 10
    assert bucket.take() > 0.0


def test_token_bucket_gives_every_earned_token_despite_float_steps():
    clock = FakeClock()
    bucket = TokenBucket(Rate(100, "second"), clock)
    for _ in range(100):
        bucket.take()
    for _ in range(1000):  # exactly the rate: one token per 10 ms, each one granted
        clock.now += 0.01
        assert bucket.take() == 0.0
    assert bucket.take() > 0.0
