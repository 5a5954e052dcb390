"""Open WebSockets leave gunicorn's pool once upgraded; worker_connections still caps them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from harness import create_topic, http, http_full, register, wait_until, ws_connect
from websockets.exceptions import InvalidStatus


def test_worker_connections_caps_websockets_and_rest_still_answers(server_factory):
    srv = server_factory(args=("--worker-connections", "3"))
    token = register(srv)
    topic = create_topic(srv, token)
    clients = [ws_connect(srv, token) for _ in range(3)]
    try:
        for client in clients:
            assert client.subscribe(topic)["type"] == "ack"

        # Three open WebSockets hold no slot of gunicorn's pool of three: REST still answers.
        status, body = http("GET", srv.url + "/topics", token=token, timeout=5)
        assert status == 200
        assert {t["name"]: t["subscribers"] for t in body["topics"]}[topic] == 3

        # A fourth WebSocket is refused before the upgrade, with the usual JSON error.
        try:
            ws_connect(srv, token).close()
        except InvalidStatus as exc:
            response = exc.response
        else:
            raise AssertionError("a fourth WebSocket was accepted past worker_connections=3")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert b"connection limit" in response.body
        assert "ws_rejected status=503 reason=capacity connections=3" in srv.log_text()

        # The open ones are unaffected, and a closed one frees its place.
        published = clients[0].publish(topic, "still here")
        assert published["type"] == "ack"
        for client in clients:
            assert client.events(1)[0]["message"]["payload"] == "still here"
        clients.pop().close()

        def fourth_fits():
            try:
                clients.append(ws_connect(srv, token))
            except InvalidStatus:
                return False
            return True

        wait_until(fourth_fits, timeout=10, what="a place freed by a closed WebSocket")
        assert clients[-1].ping()["type"] == "pong"
    finally:
        for client in clients:
            client.close()


def test_max_connections_per_worker_caps_websockets_and_sse_streams(server_factory):
    srv = server_factory(env={"MAX_CONNECTIONS_PER_WORKER": "2"})
    token = register(srv)
    topic = create_topic(srv, token)
    clients = [ws_connect(srv, token) for _ in range(2)]
    try:
        try:
            ws_connect(srv, token).close()
        except InvalidStatus as exc:
            assert exc.response.status_code == 503
        else:
            raise AssertionError("a third WebSocket was accepted past MAX_CONNECTIONS_PER_WORKER=2")
        # SSE streams count against the same cap, refused before the stream starts.
        resp = http_full("GET", f"{srv.url}/topics/{topic}/events?token={token}", timeout=5)
        assert resp.status == 503 and resp.headers.get("retry-after") == "5"
        assert "sse_rejected status=503 reason=capacity connections=2" in srv.log_text()
        assert clients[0].ping()["type"] == "pong"  # the open ones are unaffected
    finally:
        for client in clients:
            client.close()


def _can_raise_open_files_limit() -> bool:
    """Tell whether a process here may raise its open-files hard limit (CAP_SYS_RESOURCE)."""
    probe = (
        "import resource; s, h = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "try:\n    resource.setrlimit(resource.RLIMIT_NOFILE, (h + 1, h + 1))\n"
        "except (ValueError, OSError):\n    raise SystemExit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


def test_a_low_open_files_limit_is_split_between_websockets_and_requests(server_factory):
    """With a hard limit of 1100 and 1024 kept in reserve, 76 descriptors are split 38 + 38."""
    wrapper: tuple[str, ...] = ()
    if _can_raise_open_files_limit():
        # Root with CAP_SYS_RESOURCE (a CI container, say) could raise the limit, and the
        # fallback would never run: drop the capability for the server's process tree.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("processes here may raise their open-files limit and setpriv is missing")
        wrapper = (setpriv, "--bounding-set", "-sys_resource", "--inh-caps", "-sys_resource")
    srv = server_factory(nofile=1100, wrapper=wrapper)
    assert (
        "1100: 38 WebSockets and SSE streams and 38 requests in progress per worker"
        in srv.log_text()
    )
    token = register(srv)
    clients = []
    try:
        for _ in range(38):
            clients.append(ws_connect(srv, token))
        try:
            ws_connect(srv, token).close()
        except InvalidStatus as exc:
            assert exc.response.status_code == 503
        else:
            raise AssertionError("a 39th WebSocket was accepted with room for 38")
        # The requests' share is untouched by the open WebSockets.
        status, _ = http("GET", srv.url + "/topics", token=token, timeout=5)
        assert status == 200
        assert clients[0].ping()["type"] == "pong"
    finally:
        for client in clients:
            client.close()
