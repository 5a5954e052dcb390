"""The application factory: `create_app()` builds one self-contained gateway app."""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
import uuid
import weakref
from collections.abc import Mapping

from flask import Flask, g, request
from flask_cors import CORS

from gateway import metrics, protocol
from gateway.accounts import cli as accounts_cli
from gateway.accounts.sqlite import SqliteUserStore
from gateway.accounts.store import UserStore
from gateway.accounts.tokens import init_jwt
from gateway.brokers import Broker, MemoryBroker, Quotas
from gateway.config import POSTGRES_SCHEMES, Settings, load_settings
from gateway.guards import admission
from gateway.guards.access import Roles
from gateway.guards.rates import init_rate_limits
from gateway.http.errors import error_response, register_error_handlers
from gateway.logs import configure as configure_logging
from gateway.state import EXTENSION, GatewayState
from gateway.transport import wsframes
from gateway.transport.libraries import NoReaderThread
from gateway.transport.registry import Registry

log = logging.getLogger("gateway.http")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Health probes answer while the server drains: /readyz says "draining" itself.
_PROBES = ("/livez", "/readyz")
_EVERY_METHOD = ("GET", "HEAD", "POST", "OPTIONS", "PUT", "PATCH", "DELETE")


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build a gateway app from the environment, or from `test_config` variables in tests."""
    settings = load_settings(test_config)
    configure_logging(settings.log_level, settings.log_format)
    app = Flask("gateway", instance_relative_config=True)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_message_bytes,
        # simple-websocket only does the handshake: the handler's greenlet reads frames
        # itself (gateway.transport.reader) and the registry sends the WebSocket pings.
        SOCK_SERVER_OPTIONS={"thread_class": NoReaderThread},
    )
    if test_config is not None:
        app.config["TESTING"] = True
    init_jwt(app, settings)
    accounts_cli.init_app(app)  # flask --app wsgi users ...
    # flask-cors matches a preflight's method by substring, so "*" would match nothing:
    # spell out every method instead.
    methods = _EVERY_METHOD if "*" in settings.allowed_methods else settings.allowed_methods
    CORS(
        app,
        origins=list(settings.allowed_origins),
        methods=list(methods),
        expose_headers=["X-Request-ID"],
    )
    register_error_handlers(app)
    init_rate_limits(app, settings)
    _install_request_log(app)
    _answer_preflights(app)

    user_store = _make_user_store(app, settings)
    broker = _make_broker(settings).start()
    registry = Registry(
        settings.heartbeat_interval,
        settings.shutdown_grace_seconds,
        settings.max_connections_per_worker or None,
    )
    state = GatewayState(
        settings=settings,
        broker=broker,
        users=user_store,
        registry=registry,
        roles=Roles(lambda user_id: _role_of(user_store, user_id)),
        sampler=_make_sampler(broker, registry),
    )
    app.extensions[EXTENSION] = state
    # The Flask dev server ends on Ctrl-C by returning from serve_forever; draining here
    # gives its open WebSockets the same goodbye that SIGTERM gives them under gunicorn.
    atexit.register(_drain_at_exit, weakref.ref(state.registry))
    atexit.register(_close_at_exit, weakref.ref(state.broker))

    from blueprints import console, messages, metrics, openapi, topics, users, ws

    app.register_blueprint(users.bp)
    app.register_blueprint(topics.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(ws.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(metrics.bp)
    admission.init_app(app)
    return app


def _make_broker(settings: Settings) -> Broker:
    def encode(event) -> bytes:
        return wsframes.text(protocol.event(event))

    quotas = Quotas(
        ring_bytes=settings.ring_buffer_bytes,
        max_topics=settings.max_topics,
        max_topics_per_user=settings.max_topics_per_user,
    )
    observer = metrics.BrokerMetrics()
    if settings.broker_url == "memory://":
        return MemoryBroker(settings.ring_buffer_size, encode, quotas, observer)
    # Imported only when used: redis must load after gevent has patched the worker.
    from gateway.brokers.redis import RedisBroker

    return RedisBroker(
        settings.broker_url,
        settings.ring_buffer_size,
        encode,
        quotas=quotas,
        observer=observer,
    )


def _make_sampler(broker: Broker, registry: Registry) -> metrics.Sampler:
    """The gauges' Sampler; it samples by itself only where several workers share metrics.

    A worker's gauges must be written for a scrape of another worker to read them; a process
    with its metrics to itself (the dev server, tests) sets them when scraped.
    """

    def sample() -> tuple[int, int, int, bool]:
        return (*registry.counts(), broker.local_subscriptions(), not broker.problems())

    sampler = metrics.Sampler(sample, lambda: len(broker.topics()))
    if metrics.multiprocess_dir() is not None:
        sampler.start()
    return sampler


def _role_of(users: UserStore, user_id: str) -> str | None:
    user = users.get(user_id)
    return None if user is None else user.role


def _make_user_store(app: Flask, settings: Settings) -> UserStore:
    url = settings.database_url
    if url is not None and url.startswith(POSTGRES_SCHEMES):
        # Imported only when used: psycopg must load after gevent has patched the worker.
        from gateway.accounts.postgres import PostgresUserStore

        return PostgresUserStore(url)
    if url is None:
        os.makedirs(app.instance_path, exist_ok=True)
        return SqliteUserStore(os.path.join(app.instance_path, "gateway.db"))
    if url.startswith("sqlite:///"):
        return SqliteUserStore(url.removeprefix("sqlite:///") or ":memory:")
    return SqliteUserStore(url)  # a file path or :memory: (load_settings refused other URLs)


def _install_request_log(app: Flask) -> None:
    @app.before_request
    def start_request_log():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        g.started = time.perf_counter()
        if app.extensions[EXTENSION].registry.shutting_down and request.path not in _PROBES:
            # gunicorn stops accepting within a second of SIGTERM; until then, and on the
            # dev server, new requests are turned away so load balancers move on (docs/delivery.md).
            return error_response(503, "server is shutting down")
        return None

    @app.after_request
    def write_request_log(response):
        if g.get("websocket_served"):
            return response  # the WebSocket logs its own connect and disconnect lines
        response.headers["X-Request-ID"] = g.request_id
        seconds = time.perf_counter() - g.started
        # Labelled by route, never by path: a client cannot mint new series.
        rule = request.url_rule
        method = request.method if request.method in _EVERY_METHOD else "OTHER"
        metrics.http_request(
            rule.rule if rule is not None else "unmatched", method, response.status_code, seconds
        )
        level = logging.INFO if response.status_code < 500 else logging.ERROR
        log.log(
            level,
            "http id=%s method=%s path=%s status=%d ms=%.1f%s",
            g.request_id,
            request.method,
            request.path,
            response.status_code,
            seconds * 1000,
            f" error={g.error!r}" if g.get("error") else "",
        )
        return response


def _answer_preflights(app: Flask) -> None:
    """Answer every CORS preflight with 204, on any path, before auth or routing decide.

    A browser sends the real request only after a 2xx preflight: a 404 or 401 preflight
    shows up as "Failed to fetch" instead of the real request's JSON error (docs/rest-api.md
    API). flask-cors adds its headers to the 204 as to any response. Registered after the
    request log, so that the preflight gets its request id and log line.
    """

    @app.before_request
    def answer_preflight():
        headers = request.headers
        if (
            request.method == "OPTIONS"
            and "Origin" in headers
            and "Access-Control-Request-Method" in headers
        ):
            return app.response_class(status=204)
        return None


def _close_at_exit(broker_ref: weakref.ref) -> None:
    broker = broker_ref()
    if broker is not None:
        broker.close()


def _drain_at_exit(registry_ref: weakref.ref) -> None:
    registry = registry_ref()
    if registry is not None and registry.count():
        registry.shutdown()
