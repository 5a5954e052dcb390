"""A Redis gateway's life cycle: a worker that stops leaves the cluster at once (docs/operations.md "Scale-out with Redis")."""

from __future__ import annotations

import pytest
import redis
from cluster import postgres_database, running_cluster
from harness import LIMITS_OFF, create_topic, http, register, wait_until, ws_connect

# A worker that vanishes without a word stops counting when its heartbeat is this old
# (gateway/brokers/redis/counts.py WORKER_TTL); one that stops cleanly must not need it.
WORKER_TTL = 15.0


@pytest.fixture
def cluster(tmp_path):
    with postgres_database() as url, running_cluster(tmp_path, url, **LIMITS_OFF) as c:
        yield c


def subscribers(srv) -> int:
    status, body = http("GET", srv.url + "/health")
    assert status == 200, body
    return body["subscribers"]


def test_a_gateway_stopped_with_sigterm_leaves_the_cluster_at_once(cluster):
    a, b = cluster.a, cluster.b
    workers = redis.Redis.from_url(cluster.redis.url)
    token = register(a)
    topic = create_topic(a, token)
    clients = [ws_connect(a, token) for _ in range(3)]
    for client in clients:
        client.subscribe(topic)
    wait_until(lambda: subscribers(b) == 3, 10, what="B to count A's subscribers")
    # Two gateways of two workers each, every one beating in the workers set.
    wait_until(lambda: workers.zcard("gw:workers") == 4, 10, what="four live workers")
    assert a.stop(timeout=20) == 0, a.log_tail()
    for client in clients:
        client.close()
    # Well inside WORKER_TTL: A's workers said goodbye (worker_exit closes the broker), and
    # their counts went with them, instead of lingering until their heartbeat expired.
    wait_until(lambda: workers.zcard("gw:workers") == 2, WORKER_TTL / 3, what="A to leave")
    assert subscribers(b) == 0
    workers.close()
