"""Run CPU-heavy calls off the event loop, so that open WebSockets keep flowing."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a hard dependency
        return False
    return monkey.is_module_patched("threading")


class CpuPool:
    """A few native threads for CPU-heavy calls (password hashing) under gevent.

    scrypt releases the GIL, so a native thread lets the hub keep serving every other
    greenlet of the worker. The pool is one thread smaller than the machine has cores, so
    the event loop keeps a core to itself: measured on 2 cores, 20 concurrent logins on
    gevent's default 10-thread pool pushed WebSocket ping round-trips to a p99 of ~60 ms,
    and to ~6-13 ms on this one. Without gevent (the Flask dev server runs one real thread
    per request) the call is simply made in the caller's thread.
    """

    def __init__(self, size: int | None = None) -> None:
        self._size = size or max(1, (os.cpu_count() or 2) - 1)
        self._pool = None

    def run(self, func: Callable[..., T], *args) -> T:
        """Return `func(*args)`, computed on the pool when running under gevent."""
        if not _gevent_patched():
            return func(*args)
        if self._pool is None:
            # Created on first use, in the worker process, bound to its hub.
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self._size)
        return self._pool.apply(func, args)
