"""Test helper: a real redis-server of our own on a free port, that tests may stop and restart.

`RedisServer` is one server (extra arguments make it a replica, say); `SentinelServer` is a
Redis Sentinel process (`redis-server <conf> --sentinel`). tests/sentinel.py builds a master,
a replica and three sentinels out of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from services import unavailable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """Return the redis-server path, or skip (fail under CI) with the reason."""
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """One redis-server process; its data survives restart (saved to its own folder).

    `persist=False` keeps nothing on disk; `args` are more redis-server options (e.g.
    `("--replicaof", "127.0.0.1", "6379")`).
    """

    def __init__(self, workdir: Path, args: Sequence[str] = (), persist: bool = True) -> None:
        self.binary = redis_binary()
        self.port = _free_port()
        self.dir = workdir
        self.args = tuple(args)
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line."""
        durable = ["--appendonly", "yes", "--appendfsync", "always"]
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            *(durable if self.persist else ["--appendonly", "no"]),
            *self.args,
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart) the server on the same port and wait until it answers PING."""
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not answer on port {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (its append-only file keeps the data for a restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the server (SIGKILL to crash it, SIGSTOP / SIGCONT to freeze it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self, timeout: float = 10.0) -> None:
        """Crash the server (SIGKILL): nothing is saved, clients see their connections drop."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a frozen one too
                self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None


class SentinelServer(RedisServer):
    """A Redis Sentinel (`redis-server <conf> --sentinel`) watching one master.

    `quorum` sentinels must agree that the master is down (it answered nothing for
    `down_after_ms`) before one of them promotes a replica. Its log is `sentinel.log` in its
    folder (it rewrites its config file there as it learns the topology).
    """

    def __init__(
        self,
        workdir: Path,
        master: str,
        master_port: int,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
    ) -> None:
        super().__init__(workdir, persist=False)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
            f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master} 1\n"
        )

    def command(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel"]
