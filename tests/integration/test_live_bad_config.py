"""Bad configuration stops gunicorn with a non-zero exit and a message naming the problem,
instead of a worker respawning forever (docs/configuration.md)."""

from __future__ import annotations

import pytest
from harness import Server, http

ONE_WORKER = ("WEB_CONCURRENCY", "BROKER_URL", "memory://", "workers")

CASES = [
    ("jwt-empty", {"JWT_SECRET_KEY": ""}, (), ("JWT_SECRET_KEY",)),
    ("jwt-unset", {"JWT_SECRET_KEY": None}, (), ("JWT_SECRET_KEY",)),
    ("web-concurrency", {"WEB_CONCURRENCY": "2"}, (), ONE_WORKER),
    ("gunicorn-cmd-args", {"GUNICORN_CMD_ARGS": "--workers=2"}, (), ONE_WORKER),
    ("cli-workers", {}, ("-w", "2"), ONE_WORKER),
    ("log-level", {"LOG_LEVEL": "loud"}, (), ("LOG_LEVEL",)),
    ("queue-not-int", {"SUBSCRIBER_QUEUE_SIZE": "ten"}, (), ("SUBSCRIBER_QUEUE_SIZE",)),
    ("ring-negative", {"RING_BUFFER_SIZE": "-5"}, (), ("RING_BUFFER_SIZE",)),
]


@pytest.mark.parametrize("env,args,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_configuration_exits_non_zero_with_a_clear_message(tmp_path, env, args, needles):
    srv = Server(tmp_path, env=env, args=args).launch()
    try:
        rc = srv.wait_exit(20)
        if rc is None:
            try:
                serving = http("GET", srv.url + "/health", timeout=1)[0]
            except OSError as exc:
                serving = type(exc).__name__
            pytest.fail(f"still running 20 s after start (health: {serving})\n{srv.log_tail()}")
        assert rc != 0, f"bad configuration exited 0\n{srv.log_tail()}"
        log = srv.log_text()
        assert any(n.lower() in log.lower() for n in needles), (
            f"no line names {needles}\n{srv.log_tail()}"
        )
    finally:
        srv.close()
