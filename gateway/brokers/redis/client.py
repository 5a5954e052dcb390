"""One worker's Redis client: a bounded connection pool, and outages as BrokerUnavailable."""

from __future__ import annotations

import redis

from gateway.brokers.contract import BrokerUnavailable

# Redis connections per worker (the listener holds one), and how long a call waits for one.
POOL_SIZE = 32
POOL_TIMEOUT = 5.0


def connect(url: str) -> redis.Redis:
    """Return a client of `url` whose callers queue for one of POOL_SIZE connections."""
    # A bounded pool that makes callers wait: a thousand clients subscribing at once
    # must queue for a few connections, not open a thousand (redis-py's default pool
    # refuses past 100 with "Too many connections").
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_TIMEOUT,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def unavailable(func):
    """Turn a Redis connection failure into BrokerUnavailable."""

    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper
