"""Rate limits (docs/configuration.md "Limits"): logins and HTTP publishes, and the WebSocket's token bucket.

Logins and registrations are limited per client IP and, separately, per username; HTTP
publishes per user. Flask-Limiter keeps the counters: in this process with
`BROKER_URL=memory://` (one worker), in Redis otherwise, so that every worker and host spends
one budget. A counter is a fixed window that opens at its key's first hit (one INCR in Redis).
If Redis fails, each worker counts in memory until Redis answers again, so logins stay limited
(per worker) and never turn into 500s; a failure of the limiter itself lets the request through.

The blueprints wrap views in `login_limited` / `publish_limited`; a refusal is the one JSON
error shape plus `"code": "RATE_LIMITED"`, with HTTP 429 and `Retry-After`. A WebSocket
connection limits its own publishes with a `TokenBucket`: in process, no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import get_jwt_identity
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from werkzeug.exceptions import HTTPException

from gateway import metrics
from gateway.config import Rate, Settings
from gateway.http.errors import error_response
from gateway.protocol import RATE_LIMITED

log = logging.getLogger("gateway.http")

EXTENSION = "gateway.ratelimit"
# Redis connections for the counters, per worker: a login flood queues for these instead of
# opening one connection per request. A login waits at most about the timeouts on a Redis
# that is down before the in-memory counters take over.
_POOL_SIZE = 16
_POOL_TIMEOUT = 2.0
_SOCKET_TIMEOUT = 2.0
_CONNECT_TIMEOUT = 1.0
# Usernames longer than any valid one are hashed, so a client cannot make huge keys.
_LONGEST_NAME = 64

View = TypeVar("View", bound=Callable[..., Any])
Check = Callable[[], None]


@dataclass(frozen=True)
class RateLimits:
    """An app's limit checks: each raises RateLimitExceeded when over, or is None when off."""

    login: Check | None = None
    publish: Check | None = None


def init_rate_limits(app: Flask, settings: Settings) -> None:
    """Set up the login and publish limits of `app` (a limit of 0 is off)."""
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    login, publish = settings.login_rate_limit, settings.publish_rate_limit
    if login is None and publish is None:
        app.extensions[EXTENSION] = RateLimits()
        return
    limiter = _make_limiter(app, settings.broker_url)
    app.extensions[EXTENSION] = RateLimits(
        login=None if login is None else _login_check(limiter, login),
        publish=None if publish is None else _publish_check(limiter, publish),
    )


def login_limited(view: View) -> View:
    """Check LOGIN_RATE_LIMIT (per IP, per username) before `view` hashes any password."""
    return _limited(view, "login")


def publish_limited(view: View) -> View:
    """Check PUBLISH_RATE_LIMIT for the token's user; goes below `@jwt_required()`."""
    return _limited(view, "publish")


class TokenBucket:
    """An in-process token bucket: a burst of `rate.count`, refilled at count per period."""

    __slots__ = ("_capacity", "_clock", "_per_second", "_tokens", "_updated")

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(rate.count)
        self._per_second = rate.count / rate.period
        self._clock = clock
        self._tokens = self._capacity
        self._updated = clock()

    def take(self) -> float:
        """Spend one token and return 0.0, or return the seconds until one is available."""
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._per_second)
        self._updated = now
        # The tolerance keeps float crumbs (0.9999999) from refusing a token fully earned.
        if self._tokens >= 1.0 - 1e-9:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._per_second


def _limited(view: View, name: str) -> View:
    @functools.wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        check = getattr(current_app.extensions[EXTENSION], name)
        if check is not None:
            check()
        return view(*args, **kwargs)

    return limited  # type: ignore[return-value]


def _make_limiter(app: Flask, broker_url: str) -> Limiter:
    if broker_url == "memory://":
        return Limiter(_client_ip, app=app, storage_uri="memory://", strategy="fixed-window")
    # Imported only when used: redis must load after gevent has patched the worker.
    from gateway.brokers.redis.client import blocking_pool, is_sentinel_url

    # A Sentinel URL gets a pool that follows the master; the limits library then only needs
    # to know that it talks to Redis (its own Sentinel storage reads the URL differently).
    pool = blocking_pool(
        broker_url,
        max_connections=_POOL_SIZE,
        timeout=_POOL_TIMEOUT,
        socket_timeout=_SOCKET_TIMEOUT,
        socket_connect_timeout=_CONNECT_TIMEOUT,
        # Shows in Redis's CLIENT LIST which worker's limiter a connection belongs to.
        client_name=f"gateway-ratelimit-{os.getpid()}",
    )
    _forward_limiter_warnings()
    return Limiter(
        _client_ip,
        app=app,
        storage_uri="redis://" if is_sentinel_url(broker_url) else broker_url,
        storage_options={"connection_pool": pool},
        strategy="fixed-window",
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )


def _login_check(limiter: Limiter, rate: Rate) -> Check:
    by_ip = limiter.shared_limit(
        str(rate),
        scope="login-ip",
        key_func=_client_ip,
        on_breach=_refusal(rate, "login", "ip", "too many login attempts from this address"),
    )
    by_name = limiter.shared_limit(
        str(rate),
        scope="login-username",
        key_func=_username_key,
        exempt_when=lambda: _body_username() is None,
        on_breach=_refusal(rate, "login", "username", "too many login attempts for this username"),
    )
    # Both limits sit on one function: the inner decorator checks them both, IP first.
    return by_name(by_ip(_login_allowed))


def _publish_check(limiter: Limiter, rate: Rate) -> Check:
    by_user = limiter.shared_limit(
        str(rate),
        scope="publish-user",
        key_func=_user_key,
        on_breach=_refusal(rate, "publish", "user", f"too many publishes (at most {rate})"),
    )
    return by_user(_publish_allowed)


def _login_allowed() -> None:
    """Return when a login or registration is within its limits (the decorators check)."""


def _publish_allowed() -> None:
    """Return when an HTTP publish is within its limit (the decorator checks)."""


# Key functions must never raise: Flask-Limiter takes any error as a storage failure.
def _client_ip() -> str:
    return request.remote_addr or "unknown"


def _body_username() -> str | None:
    if "ratelimit_username" not in g:
        g.ratelimit_username = _read_username()
    return g.ratelimit_username


def _read_username() -> str | None:
    try:
        body = orjson.loads(request.get_data(cache=True) or b"null")
    except (HTTPException, OSError, ValueError):
        return None  # the view answers the bad body; the IP limit still counted it
    username = body.get("username") if isinstance(body, dict) else None
    return username if isinstance(username, str) else None


def _username_key() -> str:
    name = _body_username() or ""
    if len(name.encode()) > _LONGEST_NAME:
        return "user-sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return "user:" + name


def _user_key() -> str:
    return f"user:{get_jwt_identity()}"


def _refusal(rate: Rate, scope: str, key: str, message: str) -> Callable[[RequestLimit], Response]:
    def refuse(limit: RequestLimit) -> Response:
        metrics.rate_limited("login" if scope == "login" else "publish_http")
        retry_after = _seconds_left(limit, rate)
        log.info(
            "rate_limited scope=%s key=%s %s limit=%s retry_after=%d id=%s",
            scope,
            key,
            _who(scope),
            rate,
            retry_after,
            g.get("request_id", "-"),
        )
        return _too_many(f"{message}; retry in {retry_after} s", retry_after)

    return refuse


def _who(scope: str) -> str:
    # The username is the client's string: repr() escapes it so it cannot forge a line.
    if scope == "publish":
        return f"user={get_jwt_identity()} ip={_client_ip()}"
    name = _body_username()
    return f"ip={_client_ip()}" + ("" if name is None else f" username={name[:_LONGEST_NAME]!r}")


def _seconds_left(limit: RequestLimit, rate: Rate) -> int:
    try:
        reset_at = limit.window.reset_time
    except Exception:  # the storage failed after the hit: a whole window is a safe answer
        return rate.period
    return max(1, math.ceil(reset_at - time.time()))


def _too_many(message: str, retry_after: int) -> Response:
    return error_response(429, message, RATE_LIMITED, retry_after)


def _rate_limited(exc: RateLimitExceeded) -> Response:
    if exc.response is not None:
        return exc.response  # built by _refusal, Retry-After included
    # Only when building the refusal failed (Flask-Limiter logged why).
    period = int(exc.limit.limit.get_expiry())
    return _too_many(f"rate limit exceeded; retry in {period} s", period)


class _ToGatewayLog(logging.Handler):
    """Pass Flask-Limiter's warnings (Redis unreachable, errors swallowed) to our log."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("gateway.ratelimit").handle(record)


def _forward_limiter_warnings() -> None:
    # Only WARNING and up: its INFO lines carry raw keys (client-supplied usernames).
    limiter_log = logging.getLogger("flask-limiter")
    if not any(isinstance(h, _ToGatewayLog) for h in limiter_log.handlers):
        limiter_log.addHandler(_ToGatewayLog(logging.WARNING))
