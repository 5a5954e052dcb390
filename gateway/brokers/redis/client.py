"""One worker's Redis client: a bounded connection pool, and outages as BrokerUnavailable.

BROKER_URL names one Redis (`redis://`, `rediss://`) or a master that Redis Sentinel watches
(`redis+sentinel://`, `rediss+sentinel://`): then every new connection asks the sentinels
where the master is, so the pool and the pub/sub listener follow a failover by themselves.
gateway.config validates the URL at start-up (with its own, stdlib-only copy of the rules:
it runs before gevent patches the worker, and must not import redis).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from gateway.brokers.contract import BrokerUnavailable

# Redis connections per worker (the listener holds one), and how long a call waits for one.
POOL_SIZE = 32
POOL_TIMEOUT = 5.0

# BROKER_URL schemes that name a master through Redis Sentinel, and a sentinel's usual port.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
# How long one question to one sentinel may take (each new connection asks one; a sentinel
# that is down costs this once per attempt, then the next one is asked).
SENTINEL_TIMEOUT = 1.0

_HOST = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:\[\]/,@]+))(?::(?P<port>[^:]*))?"
)


@dataclass(frozen=True)
class SentinelURL:
    """A parsed `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]`."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None  # `?sentinel_password=`: the sentinels' own
    ssl: bool = False  # rediss+sentinel: TLS to the sentinels and to the master


def is_sentinel_url(url: str) -> bool:
    """Tell whether `url` names a master through Redis Sentinel."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES and "://" in url


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a Sentinel BROKER_URL; raise ValueError (never quoting the password) if malformed."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("is not a redis+sentinel:// URL")
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    if not hostlist.strip():
        raise ValueError("names no sentinel host")
    sentinels = []
    for item in hostlist.split(","):
        item = item.strip()
        match = _HOST.fullmatch(item)
        if not item or match is None:
            raise ValueError(f"has an empty or malformed sentinel address {item!r}")
        host = match["ipv6"] or match["name"]
        port = match["port"]
        if port is None:
            sentinels.append((host, SENTINEL_PORT))
        elif port.isdigit() and 0 < int(port) < 65536:
            sentinels.append((host, int(port)))
        else:
            raise ValueError(f"has a bad port {port!r} for sentinel {host!r} (1-65535)")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    if not path or not path[0].strip():
        raise ValueError("names no master: add /<master-name> (as in `sentinel monitor`)")
    if len(path) > 2:
        raise ValueError("has a path beyond /<master-name>/<db>")
    master = path[0]
    if any(c.isspace() for c in master):
        raise ValueError(f"has a master name with spaces {master!r}")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"has a bad database number {path[1]!r} (0, 1, ...)")
        db = int(path[1])
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"has unknown options {unknown} (only sentinel_password is known)")
    sentinel_password = query.get("sentinel_password", [""])[-1] or None
    return SentinelURL(
        tuple(sentinels),
        master,
        db,
        username,
        password,
        sentinel_password,
        ssl=scheme.lower() == "rediss+sentinel",
    )


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """SentinelConnectionPool's master discovery with BlockingConnectionPool's bound.

    redis-py (8.1) ships no blocking Sentinel pool; this one is both: callers wait up to
    `timeout` for one of `max_connections`, and each connection asks the sentinels for the
    master whenever it (re)connects. A connection handed back while it still talks to a
    former master is closed, and stays in the pool: it reconnects to the current master when
    next taken, so the bound holds across failovers (SentinelConnectionPool's own release
    would drop it, and a BlockingConnectionPool would then make a new one each time).
    """

    def owns_connection(self, connection) -> bool:
        # Every connection this process made goes back to the pool (release closes one that
        # talks to a former master first). Forked children start afresh (_checkpid).
        return connection.pid == self.pid

    def release(self, connection) -> None:
        if connection.pid == self.pid and not SentinelConnectionPool.owns_connection(
            self, connection
        ):
            connection.disconnect()
        super().release(connection)


def connect(url: str) -> redis.Redis:
    """Return a client of `url` whose callers queue for one of POOL_SIZE connections."""
    # A bounded pool that makes callers wait: a thousand clients subscribing at once
    # must queue for a few connections, not open a thousand (redis-py's default pool
    # refuses past 100 with "Too many connections").
    pool = blocking_pool(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_TIMEOUT,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def blocking_pool(
    url: str, max_connections: int, timeout: float, **options
) -> redis.BlockingConnectionPool:
    """Return a bounded, blocking pool of connections to `url` (any BROKER_URL Redis scheme).

    `options` are redis-py connection options (socket_timeout, client_name...). For a
    Sentinel URL, the connections go to the master the sentinels name at connect time.
    """
    if not is_sentinel_url(url):
        return redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **options
        )
    parsed = parse_sentinel_url(url)
    sentinel_options = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        # One try per sentinel: a dead sentinel is skipped for the next, not retried with
        # backoff (redis-py's default for a client would stall each lookup for seconds).
        "retry": None,
    }
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    if parsed.ssl:
        sentinel_options["ssl"] = True
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    master_options = {
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        **options,
    }
    if parsed.ssl:
        master_options["ssl"] = True
    return SentinelBlockingConnectionPool(
        parsed.master,
        sentinel,
        is_master=True,
        max_connections=max_connections,
        timeout=timeout,
        **master_options,
    )


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
