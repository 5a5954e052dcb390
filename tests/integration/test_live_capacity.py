"""Open WebSockets leave gunicorn's pool once upgraded; worker_connections still caps them."""

from __future__ import annotations

from harness import create_topic, http, register, wait_until, ws_connect
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
        assert {"name": topic, "subscribers": 3} in body["topics"]

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
