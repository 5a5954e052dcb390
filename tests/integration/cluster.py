"""Scale-out helpers: a throwaway PostgreSQL database and two gunicorn gateways on one Redis.

PostgreSQL is found as in tests/test_user_stores.py: TEST_POSTGRES_URL, else the local server
as user postgres or root; each use gets a database of its own, dropped afterwards. Without a
server (or without redis-server) the tests skip saying why, except under CI, where they fail.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# tests/ holds redis_server.py; make it importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Server, http  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from services import postgres_database, unavailable  # noqa: E402,F401


def wait_healthy(servers: list[Server], timeout: float = 30.0) -> None:
    """Wait until every launched server answers GET /health with 200."""
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        srv = pending[0]
        if srv.proc.poll() is not None:
            raise AssertionError(
                f"gunicorn exited with {srv.proc.returncode} before serving\n{srv.log_tail()}"
            )
        try:
            status, _ = http("GET", srv.url + "/health", timeout=2)
        except OSError:
            status = None
        if status == 200:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"gunicorn not healthy after {timeout}s\n{srv.log_tail()}")
        time.sleep(0.1)


class Cluster:
    """One redis-server and two gunicorn gateways (A, B) sharing it and one user database."""

    def __init__(self, workdir: Path, database_url: str, **env: str) -> None:
        self.workdir = workdir
        redis_dir = workdir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(redis_dir)
        self.env = {
            "BROKER_URL": self.redis.url,
            "DATABASE_URL": database_url,
            "JWT_SECRET_KEY": secrets.token_hex(32),
            "WEB_CONCURRENCY": "2",
            "HEARTBEAT_INTERVAL": "0",
            "SHUTDOWN_GRACE_SECONDS": "2",
            **env,
        }
        self.a: Server | None = None
        self.b: Server | None = None

    @property
    def servers(self) -> list[Server]:
        return [s for s in (self.a, self.b) if s is not None]

    def start(self) -> Cluster:
        self.redis.start()
        self.a = Server(self.workdir, env=self.env).launch()
        self.b = Server(self.workdir, env=self.env).launch()
        wait_healthy([self.a, self.b])
        return self

    def close(self) -> None:
        for srv in self.servers:
            srv.close()
        self.redis.stop()

    def logs(self) -> str:
        """Both servers' logs, for assertion messages."""
        return "\n".join(srv.log_tail(30) for srv in self.servers)


@contextlib.contextmanager
def running_cluster(workdir: Path, database_url: str, **env: str) -> Iterator[Cluster]:
    cluster = Cluster(workdir, database_url, **env)
    try:
        yield cluster.start()
    finally:
        cluster.close()
