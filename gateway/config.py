"""Settings read from the environment (docs/configuration.md), validated once at start-up."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


# DATABASE_URL prefixes that select PostgreSQL (libpq accepts both spellings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# LOG_FORMAT: key=value text lines, or one JSON object per line (gateway.logs).
LOG_FORMATS = ("text", "json")


# The deepest MAX_JSON_DEPTH: orjson writes at most 254 levels, and a stored payload sits
# two levels inside its frame (gateway.jsondoc).
DEEPEST_JSON = 250

# The shortest JWT_SECRET_KEY accepted: HS256 keys shorter than its 32-byte output are
# guessable offline from any one token (RFC 7518 §3.2 asks for at least this much).
MIN_SECRET_BYTES = 32

# BROKER_URL schemes besides memory://: one Redis, or a master that Redis Sentinel watches.
REDIS_SCHEMES = ("redis://", "rediss://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_FORM = "redis+sentinel://[:password@]host:port[,host:port...]/<master-name>[/<db>]"
# One sentinel address: host, [v6 address] or name, then an optional :port. The same rules
# as gateway.brokers.redis.client.parse_sentinel_url, which cannot be imported here (it
# loads redis, and this module runs before gevent patches the worker).
_SENTINEL_HOST = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:\[\]/,@]+))(?::(?P<port>[^:]*))?"
)

_RATE = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(second|minute|hour)s?\s*", re.I)
_PERIODS = {"second": 1, "minute": 60, "hour": 3600}


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: at most `count` per `period` seconds (also the burst size)."""

    count: int
    unit: str

    @property
    def period(self) -> int:
        """Return the window in seconds."""
        return _PERIODS[self.unit]

    def __str__(self) -> str:
        # The form Flask-Limiter (the `limits` package) parses, and our docs use.
        return f"{self.count}/{self.unit}"


@dataclass(frozen=True)
class Settings:
    """Every tunable of the gateway, with docs/configuration.md defaults."""

    jwt_secret_key: str
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_methods: tuple[str, ...] = ("*",)
    log_level: int = logging.INFO
    log_format: str = "text"
    jwt_expires_minutes: int = 1440
    ring_buffer_size: int = 100
    subscriber_queue_size: int = 100
    heartbeat_interval: int = 30
    max_message_bytes: int = 65536
    database_url: str | None = None
    broker_url: str = "memory://"
    write_timeout_seconds: float = 10.0
    shutdown_grace_seconds: float = 10.0
    # Untrusted clients (docs in the docs/configuration.md "Limits"): 0 turns a quota or a rate off.
    max_json_depth: int = 32
    ring_buffer_bytes: int = 1 << 20
    login_rate_limit: Rate | None = None
    publish_rate_limit: Rate | None = None
    max_topics: int = 10000
    max_topics_per_user: int = 100
    max_subscriptions_per_connection: int = 100
    max_connections_per_user: int = 20
    # Open WebSockets plus SSE streams one worker accepts; 0 is no limit. Under gunicorn,
    # gunicorn.conf.py sets it from worker_connections unless the environment does.
    max_connections_per_worker: int = 0
    # The Bearer token GET /metrics requires; None leaves it open (docs/operations.md "Metrics").
    metrics_token: str | None = field(default=None, repr=False)

    def origin_allowed(self, origin: str | None) -> bool:
        """Tell whether a WebSocket upgrade from this Origin may proceed (docs/rest-api.md)."""
        if origin is None or "*" in self.allowed_origins:
            return True
        return origin in self.allowed_origins


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def _database_url(env: Mapping[str, str]) -> str | None:
    url = env.get("DATABASE_URL", "").strip() or None
    if url and "://" in url and not url.startswith(("sqlite:///", *POSTGRES_SCHEMES)):
        # Name the scheme only: the rest of a URL may carry a password.
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"DATABASE_URL scheme {scheme!r} is not supported: use a SQLite file path, "
            "sqlite:///path, :memory: or a postgresql:// URL"
        )
    return url


def _broker_url(env: Mapping[str, str]) -> str:
    url = env.get("BROKER_URL", "").strip() or "memory://"
    if url == "memory://" or url.startswith(REDIS_SCHEMES):
        return url
    if url.lower().startswith(SENTINEL_SCHEMES):
        problem = sentinel_url_problem(url)
        if problem is not None:
            # The problem never quotes the password; the URL is not repeated for that reason.
            raise ConfigError(f"BROKER_URL {problem}; expected {SENTINEL_FORM}")
        return url
    scheme = url.split("://", 1)[0]
    raise ConfigError(
        f"BROKER_URL scheme {scheme!r} is not supported: use memory://, redis://host:port/db "
        f"or {SENTINEL_FORM}"
    )


def sentinel_url_problem(url: str) -> str | None:
    """Say what is wrong with a redis+sentinel:// BROKER_URL (never quoting its password)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # unbalanced [ ] around an IPv6 address
        return f"is malformed ({exc})"
    hostlist = parts.netloc.rpartition("@")[2]
    if not hostlist.strip():
        return "names no sentinel host"
    for item in hostlist.split(","):
        item = item.strip()
        match = _SENTINEL_HOST.fullmatch(item)
        if not item or match is None:
            return f"has an empty or malformed sentinel address {item!r}"
        port = match["port"]
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            host = match["ipv6"] or match["name"]
            return f"has a bad port {port!r} for sentinel {host!r} (1-65535)"
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "":
        path.pop()
    if not path or not path[0].strip():
        return "names no master: add /<master-name> (as in `sentinel monitor`)"
    if len(path) > 2:
        return "has a path beyond /<master-name>/<db>"
    if any(c.isspace() for c in path[0]):
        return f"has a master name with spaces {path[0]!r}"
    if len(path) == 2 and not path[1].isdigit():
        return f"has a bad database number {path[1]!r} (0, 1, ...)"
    unknown = sorted(set(parse_qs(parts.query, keep_blank_values=True)) - {"sentinel_password"})
    if unknown:
        return f"has unknown options {unknown} (only sentinel_password is known)"
    return None


def _rate(env: Mapping[str, str], name: str, default: str) -> Rate | None:
    raw = env.get(name, "").strip() or default
    if raw == "0":
        return None
    match = _RATE.fullmatch(raw)
    if match is None:
        raise ConfigError(
            f"{name} must look like N/second, N/minute or N/hour (0 is off); got {raw!r}"
        )
    count = int(match.group(1))
    return Rate(count, match.group(2).lower()) if count else None


def _secret(env: Mapping[str, str]) -> str:
    secret = env.get("JWT_SECRET_KEY", "")
    if not secret.strip():
        raise ConfigError("JWT_SECRET_KEY is required and must not be empty")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes; generate one with: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return secret


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in env.get(name, "*").split(",") if part.strip())
    return items or ("*",)


def log_level_from(env: Mapping[str, str]) -> int:
    """Return the logging level named by LOG_LEVEL, or raise ConfigError."""
    raw = env.get("LOG_LEVEL", "info").strip().lower() or "info"
    if raw not in LOG_LEVELS:
        choices = ", ".join(LOG_LEVELS)
        raise ConfigError(f"LOG_LEVEL must be one of {choices}; got {raw!r}")
    return LOG_LEVELS[raw]


def log_format_from(env: Mapping[str, str]) -> str:
    """Return the log format named by LOG_FORMAT (text or json), or raise ConfigError."""
    raw = env.get("LOG_FORMAT", "text").strip().lower() or "text"
    if raw not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}; got {raw!r}")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from environment variables, raising ConfigError on bad values."""
    env = os.environ if env is None else env
    secret = _secret(env)
    broker_url = _broker_url(env)
    return Settings(
        jwt_secret_key=secret,
        allowed_origins=_list(env, "ALLOWED_CORS_ORIGIN"),
        allowed_methods=_list(env, "ALLOWED_CORS_METHOD"),
        log_level=log_level_from(env),
        log_format=log_format_from(env),
        jwt_expires_minutes=_int(env, "JWT_EXPIRES_MINUTES", 1440, 1),
        ring_buffer_size=_int(env, "RING_BUFFER_SIZE", 100, 0),
        subscriber_queue_size=_int(env, "SUBSCRIBER_QUEUE_SIZE", 100, 1),
        heartbeat_interval=_int(env, "HEARTBEAT_INTERVAL", 30, 0),
        max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 65536, 64),
        database_url=_database_url(env),
        broker_url=broker_url,
        write_timeout_seconds=_int(env, "WRITE_TIMEOUT_SECONDS", 10, 1),
        shutdown_grace_seconds=_int(env, "SHUTDOWN_GRACE_SECONDS", 10, 0),
        max_json_depth=_int(env, "MAX_JSON_DEPTH", 32, 2, DEEPEST_JSON),
        ring_buffer_bytes=_int(env, "RING_BUFFER_BYTES", 1 << 20, 0),
        login_rate_limit=_rate(env, "LOGIN_RATE_LIMIT", "10/minute"),
        publish_rate_limit=_rate(env, "PUBLISH_RATE_LIMIT", "100/second"),
        max_topics=_int(env, "MAX_TOPICS", 10000, 0),
        max_topics_per_user=_int(env, "MAX_TOPICS_PER_USER", 100, 0),
        max_subscriptions_per_connection=_int(env, "MAX_SUBSCRIPTIONS_PER_CONNECTION", 100, 0),
        max_connections_per_user=_int(env, "MAX_CONNECTIONS_PER_USER", 20, 0),
        max_connections_per_worker=_int(env, "MAX_CONNECTIONS_PER_WORKER", 0, 0),
        metrics_token=_metrics_token(env),
    )


def _metrics_token(env: Mapping[str, str]) -> str | None:
    token = env.get("METRICS_TOKEN", "").strip()
    if not token:
        return None
    if len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(
            "METRICS_TOKEN must be at least 16 printable characters without spaces "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token
