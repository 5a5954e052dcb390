"""Background loops survive what kills them, and /readyz says when one is down."""

from __future__ import annotations

import threading
import time

from gateway import supervisor
from gateway.state import get_registry


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_loop_that_raises_is_logged_and_restarted(monkeypatch, caplog):
    monkeypatch.setattr(supervisor, "_FIRST_PAUSE", 0.05)
    stopping = threading.Event()
    runs = []
    release = threading.Event()

    def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise TypeError("Recursion limit reached")
        release.wait(5)  # the third run stays up

    loop = supervisor.Loop("flaky", flaky, stopping).start()
    wait_for(lambda: len(runs) == 3)
    assert loop.running and loop.restarts == 2
    assert caplog.text.count("loop_died loop=flaky") == 2
    stopping.set()
    release.set()
    wait_for(lambda: not loop.running)


def test_a_loop_that_returns_while_it_should_run_is_restarted(monkeypatch, caplog):
    monkeypatch.setattr(supervisor, "_FIRST_PAUSE", 0.05)
    stopping = threading.Event()
    runs = []
    loop = supervisor.Loop("quitter", lambda: runs.append(1), stopping).start()
    wait_for(lambda: len(runs) >= 2)
    stopping.set()
    assert loop.restarts >= 1
    assert "loop_ended loop=quitter" in caplog.text


def test_readyz_is_ready_with_every_check_ok(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"] == {"broker": "ok", "database": "ok", "heartbeat": "ok", "draining": "ok"}
    assert client.get("/livez").status_code == 200


def test_readyz_names_a_dead_heartbeat_loop_and_draining(app, client):
    with app.app_context():
        registry = get_registry()

    class Dead:
        running = False

    registry._heartbeat = Dead()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable" and "heartbeat" in body["error"]
    assert body["checks"]["heartbeat"] != "ok" and body["checks"]["broker"] == "ok"
    registry._heartbeat = None
    registry.shutting_down = True  # what SIGTERM sets
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["checks"]["draining"] != "ok"
    assert client.get("/livez").status_code == 200  # alive while it drains
    registry.shutting_down = False


def test_readyz_names_an_unreachable_database(app, client):
    with app.app_context():
        from gateway.state import get_user_store

        get_user_store().close()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "database" in response.get_json()["error"]
