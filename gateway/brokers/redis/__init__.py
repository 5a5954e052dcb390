"""RedisBroker: topics, history and seq in Redis, fan-out local to each worker (docs/operations.md "Scale-out with Redis").

Any number of gunicorn workers and hosts share one Redis. A Lua script gives each message
its seq, appends it to the topic's history ring and publishes it on the topic's channel in
one atomic step, so every worker receives one order. Each worker subscribes to a topic's
channel once, when it first has a local subscriber, and fans events out to its own
connections through the same `Fanout` as the memory broker.

`broker` holds the operations (RedisBroker), `publishing` its publishes (one Lua call, or a
pipeline of them for a client's batch), `scripts` the key layout and the Lua scripts,
`client` the bounded connection pool, `listener` the pub/sub listener and its gap repair,
`counts` the subscriber and connection counts across workers and their heartbeat.
gateway.app imports this package only for a Redis BROKER_URL (redis://, rediss:// or
redis+sentinel://), inside the factory: redis must load after gevent has patched the worker.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401 - here once, with the hint, for every module of the package
except ImportError as exc:  # pragma: no cover - redis is in requirements.txt
    raise ImportError(
        "BROKER_URL is a redis:// URL but redis is missing: pip install redis"
    ) from exc

from gateway.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
