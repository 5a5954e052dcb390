"""GET /metrics in one process (docs/operations.md "Metrics"): token, format, what is counted.

The metrics are the process's own here (no PROMETHEUS_MULTIPROC_DIR) and shared by every
app a test builds, so the tests compare values before and after what they do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ConfigError, load_settings

TOKEN = "metrics-token-" + "x" * 20
ROOT = Path(__file__).resolve().parents[1]


def scrape(client, token: str | None = None) -> dict[tuple[str, tuple], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_documented_metric_is_exposed(client):
    scrape(client)  # an HTTP request answered: its series exist from now on
    names = {name for name, _ in scrape(client)}
    for name in (
        "gateway_connections",
        "gateway_subscriptions",
        "gateway_topics",
        "gateway_broker_up",
        "gateway_messages_published_total",
        "gateway_deliveries_total",
        "gateway_dropped_total",
        "gateway_slow_consumer_closes_total",
        "gateway_rate_limited_total",
        "gateway_resumes_total",
        "gateway_publish_fanout_seconds_bucket",
        "gateway_http_requests_total",
        "gateway_http_request_seconds_bucket",
    ):
        assert name in names, name


def test_a_set_token_is_required_and_compared_whole(make_app):
    client = make_app(METRICS_TOKEN=TOKEN).test_client()
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + TOKEN[:-1]},
        {"Authorization": "Bearer " + TOKEN + "x"},
        {"Authorization": "Basic " + TOKEN},
        {"Authorization": TOKEN},
    ):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert "METRICS_TOKEN" in response.get_json()["error"]
    assert scrape(client, TOKEN)


@pytest.mark.parametrize("token", ["short", "has space in it at all", "tab\tinside-the-token-x"])
def test_a_weak_or_malformed_token_is_a_configuration_error(token):
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        load_settings({"JWT_SECRET_KEY": "k" * 40, "METRICS_TOKEN": token})


def test_the_token_never_shows_in_the_settings_repr():
    settings = load_settings({"JWT_SECRET_KEY": "k" * 40, "METRICS_TOKEN": TOKEN})
    assert settings.metrics_token == TOKEN and TOKEN not in repr(settings)


def test_publishes_deliveries_gauges_and_requests_are_counted(client, make_user):
    token = make_user()
    auth = {"Authorization": f"Bearer {token}"}
    before = scrape(client)
    assert client.post("/topics", json={"name": "m1"}, headers=auth).status_code == 201
    for i in range(3):
        response = client.post("/topics/m1/messages", json={"payload": i}, headers=auth)
        assert response.status_code == 201
    after = scrape(client)

    def grew(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("gateway_messages_published_total") == 3
    # Nobody follows m1: no deliveries, and no fan-out to time.
    assert grew("gateway_deliveries_total") == 0
    assert grew("gateway_publish_fanout_seconds_count") == 0
    assert value(after, "gateway_topics") == 1  # this app's broker, set by the scrape
    assert value(after, "gateway_broker_up") == 1
    assert value(after, "gateway_connections", transport="ws") == 0
    labels = {"endpoint": "/topics/<name>/messages", "method": "POST", "status": "201"}
    assert grew("gateway_http_requests_total", **labels) == 3
    assert grew("gateway_http_request_seconds_count", endpoint="/topics/<name>/messages") == 3


def test_paths_nobody_routes_share_one_label(client):
    before = scrape(client)
    for i in range(5):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    after = scrape(client)
    labels = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    assert (
        value(after, "gateway_http_requests_total", **labels)
        - value(before, "gateway_http_requests_total", **labels)
        == 5
    )
    assert not [key for key in after if "/no/such" in str(key)]


def test_the_grafana_dashboard_graphs_only_metrics_the_gateway_exposes(client):
    dashboard = json.loads((ROOT / "docs" / "grafana" / "gateway-dashboard.json").read_text())
    scrape(client)
    exposed = {name for name, _ in scrape(client)}
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"gateway_[a-z_]+", target["expr"]))
    assert used and not used - exposed, sorted(used - exposed)
    # And it graphs every metric there is.
    families = {
        re.sub(r"_(bucket|count|sum)$", "", name) for name in exposed if name.startswith("gateway_")
    }
    assert not families - {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}


class Follower:
    """A Subscriber that takes every event (and writes nothing)."""

    def __init__(self, user_id: str = "u") -> None:
        self.user_id = user_id
        self.events = []

    def deliver(self, event):
        self.events.append(event)

    def topic_deleted(self, topic):
        pass

    def access_revoked(self, topic):
        pass


def test_fan_out_is_counted_once_per_event_and_timed(app, client, make_user):
    from gateway.state import get_broker

    token = make_user()
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/topics", json={"name": "m2"}, headers=auth).status_code == 201
    followers = [Follower() for _ in range(3)]
    with app.app_context():
        for follower in followers:
            get_broker().subscribe("m2", follower)
    before = scrape(client)
    for i in range(4):
        response = client.post("/topics/m2/messages", json={"payload": i}, headers=auth)
        assert response.status_code == 201
    after = scrape(client)

    def grew(name: str) -> float:
        return value(after, name) - value(before, name)

    assert [len(f.events) for f in followers] == [4, 4, 4]
    assert grew("gateway_deliveries_total") == 12
    assert grew("gateway_publish_fanout_seconds_count") == 4
    assert value(after, "gateway_subscriptions") == 3
