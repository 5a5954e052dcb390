#!/usr/bin/env python3
"""Run the standard benchmark set against the gateway and the two peers; print a table.

For each server (gateway on the memory broker, gateway on Redis with 1 and with 2 workers,
socketio, ceiling) and each repeat: start the server on a free port, run idle, steady, the two
saturated fan-out runs and the multi-topic run with loadgen.py, stop the server.
Results go to bench/results/<timestamp>.json; the markdown table goes to stdout.

    python bench/run_standard.py                    # the standard set (about 8 minutes)
    python bench/run_standard.py --quick            # a smaller set (about 2 minutes)
    python bench/run_standard.py --repeat 3         # medians of three
    python bench/run_standard.py --servers ceiling,socketio
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
LOADGEN = BENCH / "loadgen.py"

# name, loadgen arguments, loadgen --timeout
STANDARD = [
    ("idle", {"idle": 2000, "idle_hold": 8, "idle_ping": 4}, 45),
    ("steady", {"subscribers": 1000, "messages": 200, "rate": 20}, 30),
    ("fanout", {"subscribers": 1000, "messages": 2000}, 60),
    ("fanout", {"subscribers": 100, "messages": 20000}, 60),
    # 4 topics at once, each with its own 250 subscribers and 1 publisher sending 2000 messages
    ("multi", {"topics": 4, "subscribers": 250, "messages": 2000}, 60),
]
QUICK = [
    ("idle", {"idle": 300, "idle_hold": 4, "idle_ping": 2}, 25),
    ("steady", {"subscribers": 200, "messages": 100, "rate": 20}, 20),
    ("fanout", {"subscribers": 200, "messages": 500}, 30),
    ("fanout", {"subscribers": 50, "messages": 2000}, 30),
    ("multi", {"topics": 4, "subscribers": 50, "messages": 500}, 30),
]
DEFAULT_SERVERS = "gateway,gateway-redis-1w,gateway-redis-2w,socketio,ceiling"
HEARTBEAT_S = 5  # server heartbeat while benchmarking, so idle connections see traffic
CONTENDED_PCT = 20  # other processes' CPU during a run above this: the figures are low


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_spec(
    name: str, port: int, queue_size: int, gateway_dir: Path, gateway_python: str, peer_python: str
) -> tuple[list[str], Path, dict, str]:
    """Command, cwd, env and readiness path for one server."""
    env = dict(os.environ, PORT=str(port), LOG_LEVEL="warning")
    conf = str(PEERS / "gunicorn_peer.conf.py")
    if name.startswith("gateway"):
        env.update(
            JWT_SECRET_KEY="bench-secret-" + "0" * 40,  # >= 32 bytes: no PyJWT key warning
            DATABASE_URL=":memory:",
            SUBSCRIBER_QUEUE_SIZE=str(queue_size),
            HEARTBEAT_INTERVAL=str(HEARTBEAT_S),
            SHUTDOWN_GRACE_SECONDS="2",
            # The load client is one user on one address at full speed: the rate limits and
            # per-user quotas (README "Limits") are off for it.
            LOGIN_RATE_LIMIT="0",
            PUBLISH_RATE_LIMIT="0",
            MAX_TOPICS_PER_USER="0",
            MAX_CONNECTIONS_PER_USER="0",
            MAX_SUBSCRIPTIONS_PER_CONNECTION="0",
        )
        env.pop("WEB_CONCURRENCY", None)
        env.pop("GUNICORN_CMD_ARGS", None)
        env.pop("BROKER_URL", None)
        if name != "gateway":  # gateway-redis-<N>w: N workers sharing a Redis of its own
            env["WEB_CONCURRENCY"] = name.rsplit("-", 1)[1].removesuffix("w")
            # Workers must share accounts too: one SQLite file instead of :memory: each.
            env["DATABASE_URL"] = str(Path(tempfile.mkdtemp(prefix="bench-db-")) / "users.db")
        cmd = [gateway_python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        return cmd, gateway_dir, env, "/health"
    if name == "ceiling":
        env["HEARTBEAT_INTERVAL"] = str(HEARTBEAT_S)
        cmd = [peer_python, "-m", "gunicorn", "-c", conf, "ceiling_server:app"]
        return cmd, PEERS, env, "/health"
    if name == "socketio":
        env["PING_INTERVAL"] = str(HEARTBEAT_S)
        cmd = [peer_python, "-m", "gunicorn", "-c", conf, "socketio_server:app"]
        return cmd, PEERS, env, "/socket.io/?EIO=4&transport=polling"
    raise ValueError(name)


class Server:
    """A server subprocess in its own process group."""

    def __init__(self, name: str, args: argparse.Namespace, queue_size: int) -> None:
        self.name = name
        self.port = free_port()
        cmd, cwd, env, self.ready_path = server_spec(
            name,
            self.port,
            queue_size,
            Path(args.gateway_dir),
            args.gateway_python,
            args.peer_python,
        )
        self.log_path = Path(args.log_dir) / f"server-{name}-{self.port}.log"
        self.redis = None
        self.proc: subprocess.Popen | None = None
        self.start_error = ""
        try:
            if name.startswith("gateway-redis"):
                redis_port = free_port()
                self.redis = subprocess.Popen(
                    ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
                    + ["--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
                env["BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
                time.sleep(0.3)  # redis-server listens within milliseconds; the gateway retries
            with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
                self.proc = subprocess.Popen(
                    cmd,
                    cwd=cwd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:  # no redis-server (or interpreter) on this machine
            self.start_error = f"{type(exc).__name__}: {exc}"

    @property
    def pids(self) -> list[int]:
        """What loadgen measures as "the server": gunicorn (it adds the workers) and Redis."""
        assert self.proc is not None
        return [self.proc.pid] + ([self.redis.pid] if self.redis is not None else [])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> bool:
        if self.proc is None:
            return False
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as resp:
                    if resp.status < 500:
                        return True
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM the group, wait, then SIGKILL; return the exit code (None if killed)."""
        try:
            return self._stop() if self.proc is not None else None
        finally:
            if self.redis is not None:
                self.redis.terminate()
                self.redis.wait(timeout=10)

    def _stop(self) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
                return None
        return self.proc.returncode


def loadgen_argv(
    protocol: str, url: str, pids: list[int], params: dict, timeout: float, payload: int
) -> list[str]:
    argv = [sys.executable, str(LOADGEN), "--protocol", protocol, "--url", url]
    for pid in pids:
        argv += ["--server-pid", str(pid)]
    argv += [
        "--timeout",
        str(timeout),
        "--payload-bytes",
        str(payload),
    ]
    for key, value in params.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_loadgen(argv: list[str], timeout: float) -> dict:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout + 45, text=True)
    except subprocess.TimeoutExpired:
        return {"errors": {"loadgen_hung": 1}}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"errors": {"loadgen_failed": 1}, "stderr": out.stderr[-2000:]}
    report = json.loads(lines[-1])
    if out.stderr.strip():
        report["stderr"] = out.stderr[-1000:]
    return report


def label(name: str, params: dict) -> str:
    if name == "idle":
        return f"idle {params['idle']} conns"
    if params.get("topics", 1) > 1:
        return (
            f"multi {params['topics']} topics x {params['subscribers']} subs"
            f" x {params['messages']} msgs"
        )
    if params.get("rate"):
        return f"steady {params['subscribers']} subs x {params['rate']:g} msg/s"
    return f"fanout {params['subscribers']} subs x {params['messages']} msgs"


def median_of(reports: list[dict], path: str) -> float | None:
    vals = []
    for r in reports:
        v = r
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(v)
    return statistics.median(vals) if vals else None


FANOUT_COLS = [
    ("deliveries/s", "deliveries_per_s"),
    ("publish/s", "publish_rate"),
    ("p50 ms", "latency_ms.p50"),
    ("p90 ms", "latency_ms.p90"),
    ("p99 ms", "latency_ms.p99"),
    ("max ms", "latency_ms.max"),
    ("lost", "lost"),
    ("dropped", "dropped_notified"),
    ("out of order", "out_of_order"),
    ("RSS peak MB", "server_rss_peak_mb"),
    ("server CPU %", "server_cpu_pct"),
    ("client CPU %", "client_cpu_pct"),
    ("other CPU %", "other_cpu_pct"),
]
IDLE_COLS = [
    ("conns open", "idle_connections"),
    ("connect errors", "connect_errors"),
    ("RSS before MB", "server_rss_before_mb"),
    ("RSS after MB", "server_rss_after_mb"),
    ("KiB/conn", "server_rss_per_conn_kib"),
    ("heartbeats", "heartbeats"),
    ("pongs", "pongs"),
    ("still open", "still_open"),
    ("disconnects", "unexpected_disconnects"),
    ("server CPU %", "server_cpu_pct"),
    ("other CPU %", "other_cpu_pct"),
]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.1f}"


def tables(summary: list[dict]) -> str:
    out = []
    for kind, cols in (("fanout", FANOUT_COLS), ("idle", IDLE_COLS)):
        rows = [s for s in summary if (s["name"] == "idle") == (kind == "idle")]
        if not rows:
            continue
        out.append("| server | run | " + " | ".join(c for c, _ in cols) + " | notes |")
        out.append("|" + "---|" * (len(cols) + 3))
        for s in rows:
            cells = [fmt(s["medians"].get(path)) for _, path in cols]
            out.append(
                f"| {s['server']} | {s['label']} | " + " | ".join(cells) + f" | {s['notes']} |"
            )
        out.append("")
    return "\n".join(out)


def notes_of(reports: list[dict]) -> str:
    notes = set()
    for r in reports:
        if r.get("timed_out"):
            notes.add("timed out")
        for key, n in (r.get("errors") or {}).items():
            notes.add(f"{key} x{n}")
        for code, n in (r.get("close_codes") or {}).items():
            notes.add(f"close {code} x{n}")
        if r.get("bad_frames"):
            notes.add(f"bad frames x{r['bad_frames']}")
        if (r.get("other_cpu_pct") or 0) > CONTENDED_PCT:
            notes.add("machine busy (other CPU)")
        if r.get("server_alive_after") is False:
            notes.add("server died")
    return "; ".join(sorted(notes))[:300]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller set, well under a minute per server"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="repeat the set N times and report medians"
    )
    p.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated; gateway-redis-<N>w = N workers on a Redis (default {DEFAULT_SERVERS})",
    )
    p.add_argument("--payload-bytes", type=int, default=100)
    p.add_argument("--gateway-dir", default=str(ROOT))
    p.add_argument("--gateway-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument(
        "--peer-python", default=sys.executable, help="python with the bench requirements"
    )
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    args = p.parse_args()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    args.log_dir = tempfile.mkdtemp(prefix="bench-logs-")
    runs_spec = QUICK if args.quick else STANDARD
    queue_size = max(params.get("messages", 0) for _, params, _ in runs_spec) + 100
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    started = time.monotonic()
    raw: list[dict] = []
    for rep in range(args.repeat):
        for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
            server = None
            for run_name, params, timeout in runs_spec:
                if server is None or not server.alive():
                    if server is not None:
                        print(
                            f"[{name}] server died (exit {server.proc.returncode}); restarting",
                            file=sys.stderr,
                        )
                    server = Server(name, args, queue_size)
                    if not server.wait_ready():
                        code = server.stop()
                        print(
                            f"[{name}] server did not become ready (exit {code}); see "
                            f"{server.log_path} {server.start_error}",
                            file=sys.stderr,
                        )
                        raw.append(
                            {
                                "server": name,
                                "repeat": rep,
                                "name": run_name,
                                "label": label(run_name, params),
                                "report": {
                                    "errors": {"server_not_ready": 1},
                                    "error_samples": [server.start_error]
                                    if server.start_error
                                    else [],
                                },
                            }
                        )
                        server = None
                        break
                t0 = time.monotonic()
                protocol = "gateway" if name.startswith("gateway") else name
                argv = loadgen_argv(
                    protocol, server.url, server.pids, params, timeout, args.payload_bytes
                )
                report = run_loadgen(argv, timeout)
                report["server_alive_after"] = server.alive()
                raw.append(
                    {
                        "server": name,
                        "repeat": rep,
                        "name": run_name,
                        "label": label(run_name, params),
                        "wall_s": round(time.monotonic() - t0, 1),
                        "report": report,
                    }
                )
                print(
                    f"[{name}] {label(run_name, params)}: {round(time.monotonic() - t0, 1)} s",
                    file=sys.stderr,
                )
            if server is not None:
                code = server.stop()
                raw[-1]["server_exit"] = code
    summary = []
    for entry in raw:
        if entry["repeat"]:
            continue
        same = [
            e["report"]
            for e in raw
            if e["server"] == entry["server"] and e["label"] == entry["label"]
        ]
        cols = IDLE_COLS if entry["name"] == "idle" else FANOUT_COLS
        summary.append(
            {
                "server": entry["server"],
                "name": entry["name"],
                "label": entry["label"],
                "n": len(same),
                "medians": {path: median_of(same, path) for _, path in cols},
                "notes": notes_of(same),
            }
        )
    result = {
        "timestamp": stamp,
        "quick": args.quick,
        "repeat": args.repeat,
        "payload_bytes": args.payload_bytes,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_client": "one loadgen.py process per run: one asyncio event loop, one core at most",
        "total_s": round(time.monotonic() - started, 1),
        "server_logs": args.log_dir,
        "summary": summary,
        "runs": raw,
    }
    path = args.results_dir / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    what = "quick set" if args.quick else "standard set"
    print(f"{what}, payload {args.payload_bytes} B, medians of {args.repeat} repeat(s), {stamp}\n")
    print(tables(summary))
    print(
        f"total {result['total_s']} s; results in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
