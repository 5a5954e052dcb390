"""No token and no password ever reaches the server's logs, gunicorn or dev server (docs/operations.md "Logging")."""

from __future__ import annotations

import base64
import json
import signal

import pytest
from harness import check_event, create_topic, http, unique, ws_connect
from websockets.exceptions import InvalidStatus


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def exercise_with_secrets(srv) -> list[str]:
    """Use tokens and passwords in every place a log could catch them; return them."""
    username = unique("logger")
    password, wrong = f"Pw-{unique('secret')}", f"Wrong-{unique('secret')}"
    status, body = http(
        "POST", srv.url + "/users/register", {"username": username, "password": password}
    )
    assert status == 201, body
    reg_token = body["token"]
    status, body = http(
        "POST", srv.url + "/users/login", {"username": username, "password": password}
    )
    assert status == 200, body
    login_token = body["token"]
    status, _ = http("POST", srv.url + "/users/login", {"username": username, "password": wrong})
    assert status == 401
    assert http("GET", srv.url + "/users/profile", token=reg_token)[0] == 200
    topic = create_topic(srv, reg_token)
    assert http("GET", srv.url + "/topics", token=reg_token)[0] == 200

    bogus = ".".join(
        [
            b64(b'{"alg":"HS256","typ":"JWT"}'),
            b64(b'{"sub":"1","exp":9999999999}'),
            b64(unique("sig").encode()),
        ]
    )
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(srv, bogus)
    assert refused.value.response.status_code == 401
    assert http("GET", srv.url + "/topics", token=bogus)[0] == 401

    with ws_connect(srv, login_token) as sub, ws_connect(srv, header_token=reg_token) as pub:
        sub.subscribe(topic)
        pub.publish(topic, "hello")
        check_event(sub.recv(), topic, seq=1)
    secrets = [password, wrong, reg_token, login_token, bogus]
    # A truncated or partly masked token is still a leak if its signature shows.
    secrets += [t.rsplit(".", 1)[1] for t in (reg_token, login_token, bogus)]
    return secrets


@pytest.mark.parametrize(
    ("kind", "args"),
    [("gunicorn", ()), ("gunicorn", ("--access-logfile", "-")), ("flask", ())],
    ids=["gunicorn", "gunicorn-access-log", "flask"],
)
def test_logs_contain_no_tokens_or_passwords(server_factory, kind, args):
    srv = server_factory(env={"LOG_LEVEL": "debug"}, kind=kind, args=args)
    secrets = exercise_with_secrets(srv)
    srv.stop(timeout=15, sig=signal.SIGTERM if kind == "gunicorn" else signal.SIGINT)
    log = srv.log_text()
    assert "/users/login" in log and "/ws" in log, (
        f"no request log lines, so redaction cannot be checked\n{srv.log_tail()}"
    )
    leaked = [s for s in secrets if s in log]
    lines = [line for line in log.splitlines() if any(s in line for s in leaked)]
    assert not leaked, "secrets in the log:\n" + json.dumps(lines[:5], indent=1)
