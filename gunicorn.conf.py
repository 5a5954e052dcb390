"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (docs/operations.md "Running in production").

The only reader of HOST, PORT and of worker settings. Configuration is validated here, in the
master, so that a bad value stops the whole server at once instead of leaving gunicorn
respawning a worker that can never boot.
"""

import contextlib
import os
import resource
import shutil
import tempfile

from gateway import logs
from gateway.config import ConfigError, load_settings, log_format_from


def _fail(message):
    logs.report_fatal(f"configuration error: {message}")
    raise SystemExit(2)


# First, so that a configuration error is written in LOG_FORMAT too (unless LOG_FORMAT is it).
with contextlib.suppress(ConfigError):
    logs.set_format(log_format_from(os.environ))
try:
    _settings = load_settings()
except ConfigError as exc:
    _fail(exc)
try:
    _port = int(os.environ.get("PORT", "8000"))
    if not 0 < _port < 65536:
        raise ValueError
except ValueError:
    _fail(f"PORT must be a port number, got {os.environ.get('PORT')!r}")
# Loopback unless told otherwise: a server started to try it out is not on the network
# (docs/configuration.md). The Docker image sets HOST=0.0.0.0.
_host = os.environ.get("HOST", "127.0.0.1").strip()
if not _host or any(c.isspace() for c in _host):
    _fail(f"HOST must be an address or host name to listen on, got {os.environ.get('HOST')!r}")
if ":" in _host and not _host.startswith("["):
    _host = f"[{_host}]"  # an IPv6 address, such as :: for every interface
# The memory broker keeps all state in one process: one worker (checked in on_starting).
# With Redis every worker shares the state: one per core unless WEB_CONCURRENCY says.
_default_workers = 1 if _settings.broker_url == "memory://" else (os.cpu_count() or 1)
try:
    workers = int(os.environ.get("WEB_CONCURRENCY", "").strip() or _default_workers)
    if workers < 1:
        raise ValueError
except ValueError:
    _fail(f"WEB_CONCURRENCY must be a positive integer, got {os.environ.get('WEB_CONCURRENCY')!r}")

bind = f"{_host}:{_port}"
# gevent's worker, whose own error answers (to requests gunicorn cannot parse) are JSON.
worker_class = "gateway.worker.GatewayWorker"
# Connections per worker (gevent's default of 1000 makes the 1001st hang): the cap on open
# WebSockets and SSE streams (the app answers 503 past it) and, separately, on HTTP
# requests in progress (gunicorn's pool; an upgraded WebSocket is no longer one of them).
worker_connections = 20000
# gunicorn waits this long for open WebSockets after SIGTERM; the app drains within
# SHUTDOWN_GRACE_SECONDS and needs a moment more to close sockets and exit.
graceful_timeout = _settings.shutdown_grace_seconds + 5
# Also bounds the drain after SIGTERM, when the worker no longer reports to the master.
timeout = max(30, _settings.shutdown_grace_seconds + 10)
keepalive = 5
loglevel = {10: "debug", 20: "info", 30: "warning", 40: "error"}[_settings.log_level]
errorlog = "-"
if _settings.log_format == "json":  # gunicorn's own lines too (docs/operations.md "Logging")
    logger_class = logs.json_gunicorn_logger()
# Prometheus metrics of every worker in one scrape (docs/operations.md "Metrics"): each worker
# writes its values to files in this directory, set before any worker imports the app. A
# directory given in the environment is emptied at start; one made here is removed at exit.
# A reload (SIGHUP) runs this file again and finds the directory in the environment: a file
# in it says that it is ours to remove.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
if not _metrics_dir:
    _metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    open(os.path.join(_metrics_dir, ".made-by-gunicorn-conf"), "w").close()
os.makedirs(_metrics_dir, exist_ok=True)
_metrics_dir_made = os.path.exists(os.path.join(_metrics_dir, ".made-by-gunicorn-conf"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
# gunicorn 27's control socket sits at one per-user path: several gateways on one host
# (tests, blue/green) would fight over it, and nothing here uses it.
control_socket_disable = True
# No access log by default (the app logs one line per request, without query strings).
# If one is enabled with --access-logfile, this format leaves the query string out, so
# that `?token=` never reaches it.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'


def on_starting(server):
    """Refuse several workers with the memory broker; raise the open-files limit.

    Also settles MAX_CONNECTIONS_PER_WORKER, the open WebSockets and SSE streams each worker
    accepts (its Settings read it when the worker loads the app): worker_connections, or
    what the open-files limit leaves room for, or the environment's value if lower.
    """
    if server.cfg.workers > 1 and _settings.broker_url == "memory://":
        _fail(
            f"{server.cfg.workers} workers requested but BROKER_URL is memory://: "
            "state lives in one process, so run one worker (WEB_CONCURRENCY=1)"
        )
    # Descriptors: one per open WebSocket or SSE stream (the app caps those at
    # MAX_CONNECTIONS_PER_WORKER), one per HTTP request in progress (gunicorn's pool,
    # worker_connections), and a margin for listeners, databases, Redis and logs.
    margin = 1024
    pool = server.cfg.worker_connections
    capacity = pool
    if _settings.max_connections_per_worker:
        capacity = min(pool, _settings.max_connections_per_worker)
    wanted = capacity + pool + margin
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        except (ValueError, OSError):
            # Not allowed to raise the hard limit: use all of it and split it, so that a
            # connection past it is refused (503) or waits, instead of failing with EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            budget = max(hard - margin, 2)
            pool = min(pool, 1000, budget // 2)
            capacity = min(capacity, budget - pool)
            server.cfg.set("worker_connections", pool)
            server.log.warning(
                "open-files hard limit is %d: %d WebSockets and SSE streams and %d requests "
                "in progress per worker (raise the limit above %d, e.g. ulimit -Hn or "
                "LimitNOFILE, for more)",
                hard,
                capacity,
                pool,
                wanted,
            )
    # Metric values a previous run left would add up with this run's.
    for entry in os.scandir(_metrics_dir):
        if entry.name.endswith(".db"):
            os.unlink(entry.path)
    # Workers fork from this process and read it in their Settings.
    os.environ["MAX_CONNECTIONS_PER_WORKER"] = str(capacity)


def post_worker_init(worker):
    """Tune the garbage collector; chain a drain of the app's WebSockets onto SIGTERM."""
    import gc
    import signal

    # The cyclic GC sets the latency tail (docs/decisions.md). Start-up objects are frozen out of
    # its reach. A collection walks every young object, so its threshold is a pause
    # budget: 100,000 gave rare ~100-200 ms pauses (p99 175 ms at 1000 x 20 msg/s), 5,000
    # gives ~5-10 ms ones. Our own objects are freed by reference counting (no cycles);
    # what the GC collects is per-request cycles in Flask and flask-sock.
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 10, 10)

    import gevent

    from gateway.state import EXTENSION

    registry = worker.wsgi.extensions[EXTENSION].registry
    stop_worker = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        # Runs in the signal context: start the drain in its own greenlet (worker_exit
        # waits for it), then let gunicorn stop accepting and finish its requests.
        # Only once: a second SIGTERM (systemd signals the whole group, then the master
        # signals the worker) must not leave worker_exit waiting on a no-op drain.
        if getattr(worker, "gateway_drain", None) is None:
            worker.gateway_drain = gevent.spawn(registry.shutdown)
        stop_worker(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def child_exit(server, worker):
    """Forget a dead worker's gauges (its counters stay: they are what it counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)


def on_exit(server):
    if _metrics_dir_made:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def worker_exit(server, worker):
    """Wait for the WebSocket drain (open WebSockets are not gunicorn's requests), then close
    the broker."""
    drain = getattr(worker, "gateway_drain", None)  # also called in the master: no drain
    if drain is not None:
        drain.join(_settings.shutdown_grace_seconds + 2)
    # Leave the cluster now, not when this worker's heartbeat expires: its subscriber and
    # connection counts stop counting at once on every other worker.
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None) or {}
    if "gateway" in extensions:
        extensions["gateway"].sampler.stop()
        extensions["gateway"].broker.close()
