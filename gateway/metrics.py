"""Prometheus metrics: what an operator graphs and alerts on (docs/operations.md "Metrics").

The metrics are prometheus_client's, defined once here. Under gunicorn, gunicorn.conf.py
points PROMETHEUS_MULTIPROC_DIR at a directory of its own before any worker starts: every
worker then writes its values to files there, and one scrape of any worker reads them all
(prometheus_client's multiprocess mode; a dead worker's files are cleaned by the master).
Without it (the Flask dev server, tests that build an app), they are the process's own.

Nothing here is called per delivery: fan-out adds its count once per event, gauges are set
by a sampler every few seconds and by the scrape itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from gateway.brokers import Event
from gateway.supervisor import Loop

log = logging.getLogger("gateway.metrics")

# The classic text format: every Prometheus version and most other scrapers read it (the
# metric names here are all plain, so nothing in them needs the newer format's escaping).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Fan-out and HTTP latencies: a gateway's are mostly milliseconds, a slow path seconds.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# What gateway_rate_limited_total counts, by `kind` (docs/operations.md "Metrics").
RATE_LIMIT_KINDS = ("login", "publish_http", "publish_ws", "connections")

CONNECTIONS = Gauge(
    "gateway_connections",
    "Open client connections, by transport",
    ["transport"],
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "gateway_subscriptions",
    "Topic subscriptions of open WebSockets and SSE streams",
    multiprocess_mode="livesum",
)
TOPICS = Gauge(
    "gateway_topics",
    "Topics that exist (with Redis: in the whole cluster)",
    multiprocess_mode="livemostrecent",
)
BROKER_UP = Gauge(
    "gateway_broker_up",
    "1 when the broker serves (Redis reachable and its listener connected), else 0",
    multiprocess_mode="livemin",
)
PUBLISHED = Counter(
    "gateway_messages_published",
    "Messages given a seq by this gateway (WebSocket and HTTP publishes)",
)
DELIVERIES = Counter(
    "gateway_deliveries",
    "Events handed to a local subscriber's queue (one per subscriber per event)",
)
DROPPED = Counter(
    "gateway_dropped",
    "Events dropped from a slow subscriber's full queue, oldest first (it is told: `dropped`)",
)
SLOW_CONSUMER_CLOSES = Counter(
    "gateway_slow_consumer_closes",
    "Connections closed because the client did not read (code 4008 / stream ended)",
)
RATE_LIMITED = Counter(
    "gateway_rate_limited",
    "Requests refused by a rate limit or quota, by kind",
    ["kind"],
)
RESUMES = Counter(
    "gateway_resumes",
    "Subscriptions resumed with since_seq, by whether everything missed was replayed",
    ["recovered"],
)
FANOUT_SECONDS = Histogram(
    "gateway_publish_fanout_seconds",
    "From a publish accepted to its frames handed to every local subscriber's socket "
    "(events that reached a local subscriber)",
    buckets=_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "gateway_http_requests",
    "HTTP requests answered, by route, method and status",
    ["endpoint", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "gateway_http_request_seconds",
    "Time to answer an HTTP request, by route",
    ["endpoint"],
    buckets=_BUCKETS,
)


# Every series a client can cause is there from the start, at 0: a rate() needs a start.
disable_created_metrics()  # one process or many workers, the same series
for _kind in RATE_LIMIT_KINDS:
    RATE_LIMITED.labels(_kind)
for _recovered in ("true", "false"):
    RESUMES.labels(_recovered)


def multiprocess_dir() -> str | None:
    """Where the workers of this host write their values, if gunicorn set one up."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """Return the text of one scrape (every worker of the host, under gunicorn) and its type."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return generate_latest(registry), CONTENT_TYPE


class BrokerMetrics:
    """The broker's Observer: counts publishes and fan-out, times fan-out per event."""

    __slots__ = ()

    def published(self, count: int) -> None:
        PUBLISHED.inc(count)

    def fanned_out(self, events: Sequence[Event], deliveries: int) -> None:
        """Called once the socket writes of `events` ran: `deliveries` queue appends in all."""
        if not deliveries:
            return  # nobody here follows them: no fan-out to time
        DELIVERIES.inc(deliveries)
        now = time.time()
        for event in events:
            # The timestamp is taken when the publish is accepted (by whichever worker).
            FANOUT_SECONDS.observe(max(now - event.timestamp, 0.0))


def dropped(count: int) -> None:
    DROPPED.inc(count)


def slow_consumer_closed() -> None:
    SLOW_CONSUMER_CLOSES.inc()


def rate_limited(kind: str) -> None:
    RATE_LIMITED.labels(kind).inc()


def resumed(recovered: bool) -> None:
    RESUMES.labels("true" if recovered else "false").inc()


def http_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(endpoint, method, str(status)).inc()
    HTTP_SECONDS.labels(endpoint).observe(seconds)


class Sampler:
    """Sets this worker's gauges every `interval` seconds, and before a scrape.

    `sample` returns (ws connections, sse streams, subscriptions, broker up); topics are
    counted only by `refresh` (a scrape), since they are one number for the whole cluster.
    """

    def __init__(
        self,
        sample: Callable[[], tuple[int, int, int, bool]],
        count_topics: Callable[[], int],
        interval: float = 2.0,
    ) -> None:
        self._sample = sample
        self._count_topics = count_topics
        self._interval = interval
        self._stopping = threading.Event()
        self._loop: Loop | None = None

    def start(self) -> Sampler:
        if self._loop is None:
            self._set()  # at once: until then broker_up would read 0
            self._loop = Loop("metrics", self._run, self._stopping).start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def refresh(self) -> None:
        """Set every gauge now (a scrape is about to read them)."""
        self._set()
        # The broker may be down: broker_up says so, and topics keep their last value.
        with contextlib.suppress(Exception):
            TOPICS.set(self._count_topics())

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._set()

    def _set(self) -> None:
        try:
            ws, sse, subscriptions, up = self._sample()
        except Exception:
            log.exception("metrics_sample_failed")
            return
        CONNECTIONS.labels("ws").set(ws)
        CONNECTIONS.labels("sse").set(sse)
        SUBSCRIPTIONS.set(subscriptions)
        BROKER_UP.set(1 if up else 0)
