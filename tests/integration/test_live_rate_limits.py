"""Login rate limits on a real gunicorn (docs/configuration.md "Limits"): per client IP and per username,
429 with Retry-After, live WebSockets unaffected by a flood, and one budget for every worker
when the counters live in Redis.

Clients come from distinct loopback addresses (127.0.0.x: Linux routes the whole /8 to lo), so
a test can tell the per-address budget from the per-username one.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from harness import PASSWORD, Response, post_from, unique, ws_connect

# tests/ holds redis_server.py; make it importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_server import RedisServer  # noqa: E402

WRONG = "not-the-password"


def login_from(server, ip: str, username: str, password: str = WRONG) -> Response:
    return post_from(server.port, ip, "/users/login", {"username": username, "password": password})


def register_from(server, ip: str, username: str) -> str:
    resp = post_from(
        server.port, ip, "/users/register", {"username": username, "password": PASSWORD}
    )
    assert resp.status == 201, (resp.status, resp.body)
    return resp.json["token"]


def assert_rate_limited(resp: Response, period: int) -> None:
    assert resp.status == 429, (resp.status, resp.body)
    assert resp.json["code"] == "RATE_LIMITED", resp.json
    retry_after = resp.headers.get("retry-after", "")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= period, resp.headers
    assert f"retry in {retry_after} s" in resp.json["error"], resp.json


def test_login_flood_gets_429s_while_websockets_keep_their_pongs(server_factory):
    srv = server_factory(env={"LOGIN_RATE_LIMIT": "5/minute"})
    token = register_from(srv, "127.0.0.2", unique("ws"))
    victim = unique("victim")
    results: list[Response] = []
    with ws_connect(srv, token) as client, ThreadPoolExecutor(8) as pool:
        flood = [pool.submit(login_from, srv, "127.0.0.1", victim) for _ in range(80)]
        pongs = 0
        while not all(f.done() for f in flood) or pongs < 3:
            client.ping(timeout=5)  # a stalled event loop fails here
            pongs += 1
        results = [f.result(timeout=30) for f in flood]

    statuses = [r.status for r in results]
    assert statuses.count(401) == 5 and statuses.count(429) == 75, statuses
    for resp in results:
        if resp.status == 429:
            assert_rate_limited(resp, 60)

    # The address's budget is spent: another username from it is refused too...
    assert_rate_limited(login_from(srv, "127.0.0.1", unique("other")), 60)
    # ...and the victim's budget is spent, from any address.
    assert_rate_limited(login_from(srv, "127.0.0.3", victim), 60)
    # Everyone else, elsewhere, logs in as usual.
    user = unique("user")
    register_from(srv, "127.0.0.4", user)
    assert login_from(srv, "127.0.0.5", user, PASSWORD).status == 200
    log = srv.log_text()
    assert "rate_limited scope=login key=ip ip=127.0.0.1" in log, srv.log_tail()
    assert WRONG not in log


@pytest.fixture
def redis_server(tmp_path):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _limiter_pids(redis_url: str) -> set[str]:
    """Return the pids of the workers whose limiter holds a Redis connection."""
    with redis.Redis.from_url(redis_url) as r:
        names = [c["name"] for c in r.client_list()]
    return {n.rsplit("-", 1)[1] for n in names if n.startswith("gateway-ratelimit-")}


def test_two_workers_share_one_username_budget_through_redis(server_factory, redis_server):
    count = 4
    srv = server_factory(
        env={
            "LOGIN_RATE_LIMIT": f"{count}/hour",
            "BROKER_URL": redis_server.url,
            "WEB_CONCURRENCY": "2",
            "HEARTBEAT_INTERVAL": "0",
        }
    )
    user = unique("shared")
    register_from(srv, "127.0.0.2", user)  # one of the username's budget, on one worker

    # Each attempt comes from an address of its own on a new connection: only the username's
    # budget can refuse it, and the two workers each accept some of the connections.
    def attempt(i: int) -> Response:
        return login_from(srv, f"127.0.1.{i + 1}", user, PASSWORD if i % 2 else WRONG)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(48), timeout=60))

    pids = _limiter_pids(redis_server.url)
    assert len(pids) == 2, f"only one worker checked limits ({pids}); the test proves nothing"
    statuses = [r.status for r in results]
    answered = [s for s in statuses if s != 429]
    assert len(answered) == count - 1, statuses
    assert set(answered) <= {200, 401}, statuses
    for resp in results:
        if resp.status == 429:
            assert_rate_limited(resp, 3600)


def test_logins_survive_a_redis_outage(server_factory, redis_server):
    srv = server_factory(
        env={
            "LOGIN_RATE_LIMIT": "3/hour",
            "BROKER_URL": redis_server.url,
            "WEB_CONCURRENCY": "1",
            "HEARTBEAT_INTERVAL": "0",
        }
    )
    user = unique("outage")
    register_from(srv, "127.0.0.2", user)
    redis_server.stop()

    # No 500: the worker counts in memory while Redis is down, so the limit still holds.
    results = [login_from(srv, "127.0.0.3", user, PASSWORD) for _ in range(4)]
    assert [r.status for r in results[:3]] == [200, 200, 200], [r.body for r in results]
    assert_rate_limited(results[3], 3600)
    assert "falling back to in-memory storage" in srv.log_text(), srv.log_tail()
