"""/metrics (docs/operations.md "Metrics"): one scrape of either worker adds up every worker.

One gunicorn gateway with two gevent workers on a Redis of its own runs a scripted workload
(connections, subscriptions, publishes over WebSocket and HTTP, a resume, refused logins, a
subscriber that never reads); every scrape, whichever worker answers it, must show the
workload's exact totals. Then a worker is killed: its connections leave the gauges, while
the counters keep what it counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest
from harness import (
    PASSWORD,
    RawWS,
    create_topic,
    http,
    http_full,
    register,
    unique,
    wait_until,
    ws_connect,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer

METRICS_TOKEN = "scrape-" + "s3cret" * 6
SUBSCRIBERS = 4
WS_PUBLISHES = 30
HTTP_PUBLISHES = 10


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("metrics-redis"), persist=False).start()
    yield server
    server.stop()


def scrape(srv) -> dict[tuple[str, tuple], float]:
    """One scrape as {(sample name, sorted labels): value}."""
    resp = http_full(
        "GET", srv.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert resp.status == 200, (resp.status, resp.body[:300])
    content_type = {k.lower(): v for k, v in resp.headers.items()}["content-type"]
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    found = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """Sum of every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def per_worker_http_requests(directory) -> dict[int, float]:
    """gateway_http_requests_total per worker pid, read from each worker's own file."""
    found: dict[int, float] = {}
    for entry in os.scandir(directory):
        if not entry.name.startswith("counter_"):
            continue
        pid = int(entry.name.removesuffix(".db").rsplit("_", 1)[1])
        for key, count, _, _ in MmapedDict.read_all_values_from_file(entry.path):
            if json.loads(key)[0] == "gateway_http_requests":
                found[pid] = found.get(pid, 0.0) + count
    return found


def worker_pids(srv) -> set[int]:
    children = f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children"
    with open(children) as f:
        return {int(pid) for pid in f.read().split()}


def test_one_scrape_of_either_worker_counts_the_whole_workload(server_factory, redis, tmp_path):
    metrics_dir = tmp_path / "prometheus"
    srv = server_factory(
        env={
            "BROKER_URL": redis.url,
            "WEB_CONCURRENCY": "2",
            "METRICS_TOKEN": METRICS_TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "LOGIN_RATE_LIMIT": "4/minute",
            "SUBSCRIBER_QUEUE_SIZE": "50",
            "WRITE_TIMEOUT_SECONDS": "2",
            "HEARTBEAT_INTERVAL": "0",
        }
    )
    assert len(worker_pids(srv)) == 2

    # The token is required, and a wrong one is refused the same way.
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        resp = http_full("GET", srv.url + "/metrics", headers=headers)
        assert resp.status == 401, (headers, resp.status)
        assert "error" in resp.json

    token = register(srv)  # one hit of the login limit (per address)
    topic = create_topic(srv, token)
    # Refused logins until the limit answers 429: at most the 3 hits left, then one more.
    statuses = [
        http("POST", srv.url + "/users/login", {"username": unique("x"), "password": PASSWORD})[0]
        for _ in range(4)
    ]
    assert statuses[-1] == 429, statuses

    with contextlib.ExitStack() as stack:
        subs = [stack.enter_context(ws_connect(srv, token)) for _ in range(SUBSCRIBERS)]
        for sub in subs:
            sub.subscribe(topic)
        pub = stack.enter_context(ws_connect(srv, token))
        for i in range(WS_PUBLISHES):
            pub.send(
                {
                    "type": "publish",
                    "topic": topic,
                    "request_id": str(i),
                    "message": {"id": f"ws-{i}", "payload": i},
                }
            )
        assert [pub.recv()["type"] for _ in range(WS_PUBLISHES)] == ["ack"] * WS_PUBLISHES
        for i in range(HTTP_PUBLISHES):
            status, body = http(
                "POST",
                f"{srv.url}/topics/{topic}/messages",
                {"id": f"http-{i}", "payload": i},
                token=token,
            )
            assert status == 201, (status, body)
        published = WS_PUBLISHES + HTTP_PUBLISHES
        for sub in subs:
            assert [e["message"]["seq"] for e in sub.events(published)] == list(
                range(1, published + 1)
            )
        # A resume that recovers everything after seq 35.
        with ws_connect(srv, token) as resumed:
            ack = resumed.subscribe(topic, since_seq=published - 5)
            assert ack["recovered"] is True

        # HTTP requests until both workers have answered some (the kernel picks the worker).
        def both_answered() -> bool:
            http("GET", srv.url + "/health")
            return len([n for n in per_worker_http_requests(metrics_dir).values() if n]) == 2

        wait_until(both_answered, 30, interval=0, what="requests answered by both workers")

        connections = SUBSCRIBERS + 1  # and the publisher; the resumed one is closed

        def settled(samples: dict) -> bool:
            return (
                value(samples, "gateway_connections", transport="ws") == connections
                and value(samples, "gateway_subscriptions") == SUBSCRIBERS
            )

        # Gauges are written by each worker every 2 s; then several scrapes (either worker
        # may answer each) must all show the totals of both.
        wait_until(lambda: settled(scrape(srv)), 15, what="gauges of both workers")
        for _ in range(6):
            samples = scrape(srv)
            assert settled(samples), samples
            assert value(samples, "gateway_connections", transport="sse") == 0
            assert value(samples, "gateway_topics") == 1
            assert value(samples, "gateway_broker_up") == 1
            assert value(samples, "gateway_messages_published_total") == published
            # Every event reached each subscriber once; the resume replayed, it delivered none.
            assert value(samples, "gateway_deliveries_total") == published * SUBSCRIBERS
            assert value(samples, "gateway_resumes_total", recovered="true") == 1
            assert value(samples, "gateway_resumes_total", recovered="false") == 0
            assert value(samples, "gateway_rate_limited_total", kind="login") == 1
            assert value(samples, "gateway_dropped_total") == 0
            assert value(samples, "gateway_slow_consumer_closes_total") == 0
            # Fan-out is timed once per event in each worker that has subscribers of it.
            fanouts = value(samples, "gateway_publish_fanout_seconds_count")
            assert published <= fanouts <= 2 * published, fanouts
            assert (
                value(
                    samples,
                    "gateway_http_requests_total",
                    endpoint="/topics",
                    method="POST",
                    status="201",
                )
                == 1
            )
            assert (
                value(
                    samples,
                    "gateway_http_requests_total",
                    endpoint="/topics/<name>/messages",
                    method="POST",
                    status="201",
                )
                == HTTP_PUBLISHES
            )
            assert (
                value(
                    samples,
                    "gateway_http_requests_total",
                    endpoint="/users/login",
                    method="POST",
                    status="429",
                )
                == 1
            )
            assert total(samples, "gateway_http_request_seconds_count") == total(
                samples, "gateway_http_requests_total"
            )

        # A worker dies: the master forgets its gauges; counters keep what it counted.
        before = scrape(srv)
        victim = next(iter(worker_pids(srv)))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in worker_pids(srv), 15, what="the killed worker gone")

        def alive(client) -> bool:
            try:
                client.ping(timeout=2)
            except Exception:  # noqa: BLE001 - its worker died: the socket is closed
                return False
            return True

        survivors = sum(alive(c) for c in (*subs, pub))
        wait_until(
            lambda: value(scrape(srv), "gateway_connections", transport="ws") == survivors,
            20,
            what=f"gateway_connections == {survivors} surviving WebSockets",
        )
        after = scrape(srv)
        for name in ("gateway_messages_published_total", "gateway_deliveries_total"):
            assert value(after, name) == value(before, name), name

    # A subscriber that never reads: its queue drops the oldest, then it is cut off.
    stalled = RawWS(srv.port, token, rcvbuf=4096)
    stalled.send_json({"type": "subscribe", "topic": topic})
    wait_until(
        lambda: value(scrape(srv), "gateway_subscriptions") == 1,
        15,
        what="the stalled subscription in the gauges",
    )
    payload = "q" * 8192
    deadline = time.monotonic() + 60
    with ws_connect(srv, token) as pub:
        while value(scrape(srv), "gateway_slow_consumer_closes_total") < 1:
            assert time.monotonic() < deadline, "the stalled subscriber was never cut off"
            for i in range(50):
                pub.publish(topic, payload, msg_id=f"big-{i}")
    samples = scrape(srv)
    assert value(samples, "gateway_slow_consumer_closes_total") == 1
    assert value(samples, "gateway_dropped_total") > 0
    stalled.close()
