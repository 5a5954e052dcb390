"""BROKER_URL=redis+sentinel://...: parsing (the broker's client) and validation (gateway.config).

The two read the same rules twice (gateway.config must not import redis), so every URL here
is put to both: they must accept and refuse alike. A refusal names the problem and never the
password.
"""

from __future__ import annotations

import pytest
import redis

from gateway.brokers.redis import client
from gateway.brokers.redis.client import (
    SentinelBlockingConnectionPool,
    SentinelURL,
    blocking_pool,
    is_sentinel_url,
    parse_sentinel_url,
)
from gateway.config import ConfigError, load_settings, sentinel_url_problem

BASE = {"JWT_SECRET_KEY": "k" * 32}


def settings_for(url: str):
    return load_settings({**BASE, "BROKER_URL": url})


VALID = [
    (
        "redis+sentinel://h1:26379,h2:26380/mymaster/0",
        SentinelURL((("h1", 26379), ("h2", 26380)), "mymaster", 0),
    ),
    (
        "redis+sentinel://10.0.0.1:5000/cache/3",
        SentinelURL((("10.0.0.1", 5000),), "cache", 3),
    ),
    # The port defaults to 26379, the database to 0; a trailing slash is fine.
    ("redis+sentinel://h1,h2/mymaster", SentinelURL((("h1", 26379), ("h2", 26379)), "mymaster")),
    ("redis+sentinel://h1/mymaster/", SentinelURL((("h1", 26379),), "mymaster")),
    (
        "redis+sentinel://:s%40cret@h1:26379,h2:26379/mymaster/0",
        SentinelURL((("h1", 26379), ("h2", 26379)), "mymaster", 0, None, "s@cret"),
    ),
    (
        "redis+sentinel://gw:pw@h1:1/m/1?sentinel_password=sp",
        SentinelURL((("h1", 1),), "m", 1, "gw", "pw", "sp"),
    ),
    (
        "redis+sentinel://[::1]:26379,[fe80::1]/m/0",
        SentinelURL((("::1", 26379), ("fe80::1", 26379)), "m", 0),
    ),
    (
        "rediss+sentinel://h1:26379/m/2",
        SentinelURL((("h1", 26379),), "m", 2, ssl=True),
    ),
    (
        "redis+sentinel://h1:65535, h2:1/m",  # spaces around a comma
        SentinelURL((("h1", 65535), ("h2", 1)), "m"),
    ),
]


@pytest.mark.parametrize(("url", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_urls_parse_and_pass_validation(url, expected):
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected
    assert sentinel_url_problem(url) is None
    assert settings_for(url).broker_url == url


INVALID = [
    ("redis+sentinel:///mymaster/0", "names no sentinel host"),
    ("redis+sentinel://:pw@/mymaster/0", "names no sentinel host"),
    ("redis+sentinel://h1:26379,,h2:26379/m/0", "empty or malformed sentinel address ''"),
    ("redis+sentinel://h1:26379,/m/0", "empty or malformed sentinel address ''"),
    ("redis+sentinel://h1:26379", "names no master"),
    ("redis+sentinel://h1:26379/", "names no master"),
    ("redis+sentinel://h1:26379//0", "names no master"),
    ("redis+sentinel://h1:0/m", "bad port '0' for sentinel 'h1'"),
    ("redis+sentinel://h1:65536/m", "bad port '65536'"),
    ("redis+sentinel://h1:port/m", "bad port 'port'"),
    ("redis+sentinel://h1:/m", "bad port ''"),
    ("redis+sentinel://h1:-1/m", "bad port '-1'"),
    ("redis+sentinel://h1:1:2/m", "malformed sentinel address 'h1:1:2'"),
    ("redis+sentinel://h1/m/x", "bad database number 'x'"),
    ("redis+sentinel://h1/m/-1", "bad database number '-1'"),
    ("redis+sentinel://h1/m/0/extra", "path beyond"),
    ("redis+sentinel://h1/my%20master", "master name with spaces"),
    ("redis+sentinel://h1/m?db=2", "unknown options ['db']"),
]


@pytest.mark.parametrize(("url", "problem"), INVALID, ids=[v[0] for v in INVALID])
def test_malformed_urls_are_refused_by_both_saying_why(url, problem):
    assert problem in sentinel_url_problem(url)
    with pytest.raises(ValueError, match=None) as parsed:
        parse_sentinel_url(url)
    assert problem in str(parsed.value)
    with pytest.raises(ConfigError) as refused:
        settings_for(url)
    message = str(refused.value)
    assert message.startswith("BROKER_URL ") and problem in message, message
    assert "redis+sentinel://[:password@]host:port" in message  # the expected form


def test_a_refusal_never_shows_the_password():
    for url in (
        "redis+sentinel://:hunter2-secret@h1:99999/m",
        "redis+sentinel://user:hunter2-secret@/m",
        "redis+sentinel://:hunter2-secret@h1",
        "redis+sentinel://:hunter2-secret@h1/m/x",
    ):
        with pytest.raises(ConfigError) as refused:
            settings_for(url)
        assert "hunter2" not in str(refused.value)
        with pytest.raises(ValueError) as parsed:
            parse_sentinel_url(url)
        assert "hunter2" not in str(parsed.value)


def test_other_schemes_are_still_what_they_were():
    assert settings_for("redis://127.0.0.1:6379/0").broker_url == "redis://127.0.0.1:6379/0"
    assert settings_for("rediss://h:6380/1").broker_url == "rediss://h:6380/1"
    assert settings_for("").broker_url == "memory://"
    with pytest.raises(ConfigError, match="'nats' is not supported.*redis\\+sentinel://"):
        settings_for("nats://localhost")
    assert not is_sentinel_url("redis://h/0")
    assert not is_sentinel_url("redis+sentinel")


def test_a_sentinel_url_makes_a_bounded_blocking_pool_of_the_master():
    pool = blocking_pool(
        "redis+sentinel://:pw@h1:1,h2:2/mymaster/4?sentinel_password=sp",
        max_connections=3,
        timeout=0.5,
        socket_timeout=5,
    )
    assert isinstance(pool, SentinelBlockingConnectionPool)
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout, pool.service_name) == (3, 0.5, "mymaster")
    assert pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (4, "pw", 5)
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert addresses == [("h1", 1), ("h2", 2)]
    # The sentinels get their own password and a short timeout, and are not retried.
    first = sentinels[0].connection_pool.connection_kwargs
    assert first["password"] == "sp"
    assert first["socket_timeout"] == client.SENTINEL_TIMEOUT
    assert first["retry"] is None


def test_rediss_sentinel_uses_tls_to_both():
    pool = blocking_pool("rediss+sentinel://h1:1/m", max_connections=1, timeout=1)
    assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    sentinel = pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_class is redis.connection.SSLConnection


def test_failed_connects_give_their_slot_back_and_make_no_more_connections():
    """No sentinel answers here (port 1): each call fails at once, and the bound holds.

    redis-py's SentinelConnectionPool drops a connection that is not to the current master
    when it comes back; a blocking pool would then make a new one for each call.
    """
    pool = blocking_pool("redis+sentinel://127.0.0.1:1/m", max_connections=2, timeout=0.2)
    for _ in range(5):
        with pytest.raises(redis.sentinel.MasterNotFoundError):
            pool.get_connection()
    assert len(pool._connections) == 1


def test_a_plain_redis_url_keeps_its_pool():
    pool = blocking_pool("redis://127.0.0.1:1/2", max_connections=2, timeout=1)
    assert type(pool) is redis.BlockingConnectionPool
    assert pool.connection_kwargs["db"] == 2
