"""Run CPU-heavy calls off the event loop, so that open WebSockets keep flowing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a hard dependency
        return False
    return monkey.is_module_patched("threading")


def run_blocking(func: Callable[..., T], *args) -> T:
    """Call `func(*args)` in gevent's native thread pool when running under gevent.

    Password hashing (scrypt) releases the GIL, so a real thread lets the hub keep serving
    every other greenlet of the worker meanwhile. Without gevent (the Flask dev server uses
    one real thread per request) the call is simply made in the caller's thread.
    """
    if _gevent_patched():
        import gevent

        return gevent.get_hub().threadpool.apply(func, args)
    return func(*args)
