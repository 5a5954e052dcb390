"""Test helper: a Redis master, one replica and three sentinels on free ports, to fail over.

`SentinelCluster(workdir).start()` returns once the replica is in sync and every sentinel
knows the master, the replica and the two other sentinels (a failover needs all three);
`url` is the gateway's BROKER_URL for it. `kill_master()` crashes the master (SIGKILL) and
`wait_failover()` waits until the sentinels name the replica as the master and it acts as
one. Every wait polls a condition against a deadline. Without redis-server the test skips
(fails under CI), as tests/redis_server.py does.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import redis
from redis_server import RedisServer, SentinelServer

MASTER_NAME = "gwmaster"


def poll(predicate, timeout: float, what: str, interval: float = 0.05):
    """Return predicate()'s first truthy value; fail after `timeout` saying `what`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
        except (redis.RedisError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def client(port: int) -> redis.Redis:
    """A short-lived client of one process (not through Sentinel), failing fast."""
    return redis.Redis("127.0.0.1", port, socket_timeout=2, socket_connect_timeout=1, retry=None)


class SentinelCluster:
    """A master, a replica of it and three sentinels (quorum 2) on 127.0.0.1."""

    def __init__(self, workdir: Path, down_after_ms: int = 1000) -> None:
        self.workdir = workdir
        master_dir, replica_dir = workdir / "master", workdir / "replica"
        master_dir.mkdir(parents=True, exist_ok=True)
        replica_dir.mkdir(parents=True, exist_ok=True)
        # No 5 s wait for more replicas before the first full sync (diskless by default).
        self.master = RedisServer(
            master_dir,
            args=(
                *("--logfile", str(master_dir / "redis.log")),
                *("--repl-diskless-sync-delay", "0"),
            ),
            persist=False,
        )
        self.replica = RedisServer(
            replica_dir,
            args=(
                *("--logfile", str(replica_dir / "redis.log")),
                *("--replicaof", "127.0.0.1", str(self.master.port)),
            ),
            persist=False,
        )
        self.sentinels = [
            SentinelServer(
                workdir / f"sentinel-{i}", MASTER_NAME, self.master.port, 2, down_after_ms
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        """BROKER_URL: every sentinel, then the master's name and database 0."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica, *self.sentinels]

    def start(self, timeout: float = 20.0) -> SentinelCluster:
        """Start everything; return once the sentinels could fail the master over."""
        self.master.start()
        self.replica.start()
        poll(self._replica_in_sync, timeout, "the replica to sync with the master")
        # Started after the replica is in sync: a sentinel learns of replicas from the
        # master's INFO, which it reads at once and then every 10 s.
        for sentinel in self.sentinels:
            sentinel.start()
        poll(self._sentinels_ready, timeout, "the sentinels to know each other and the replica")
        return self

    def _replica_in_sync(self) -> bool:
        info = client(self.replica.port).info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = client(sentinel.port).sentinel_master(MASTER_NAME)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels name it (None if they do not agree)."""
        ports = []
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                address = client(sentinel.port).sentinel_get_master_addr_by_name(MASTER_NAME)
                if address:
                    ports.append(int(address[1]))
        for port in set(ports):
            if ports.count(port) * 2 > len(self.sentinels):
                return port
        return None

    def kill_master(self) -> None:
        """Crash the master (SIGKILL): what it had not yet sent to the replica is lost."""
        self.master.kill()

    def wait_failover(self, timeout: float = 30.0) -> None:
        """Wait until the sentinels name the replica as master and it accepts writes."""

        def promoted() -> bool:
            if self.master_port() != self.replica.port:
                return False
            return client(self.replica.port).info("replication").get("role") == "master"

        poll(promoted, timeout, "the sentinels to promote the replica", interval=0.1)

    def logs(self) -> str:
        """The tail of every process's log, for assertion messages."""
        parts = []
        for path in sorted(self.workdir.glob("*/*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.kill()
