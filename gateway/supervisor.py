"""Background loops that nothing a client sends can end (docs/configuration.md "Limits", "Operations").

Each loop (the Redis listener, the Redis heartbeat, the WebSocket heartbeat ticker) handles
one item at a time and logs a bad one itself. `Loop` is the second line: if the loop's
function still raises, or returns while it should run, the error is logged and the loop
starts again after a pause that doubles up to 30 s. Until it runs again `running` is
False, and /readyz answers 503 naming it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("gateway.supervisor")

_FIRST_PAUSE = 0.5
_LONGEST_PAUSE = 30.0


class Loop:
    """Run `target` in a daemon thread (a greenlet under gevent) until `stopping` is set."""

    def __init__(self, name: str, target: Callable[[], None], stopping: threading.Event) -> None:
        self.name = name
        self.restarts = 0
        self.running = False
        self._target = target
        self._stopping = stopping
        self._thread: threading.Thread | None = None

    def start(self) -> Loop:
        """Start the loop in the background; return self."""
        self._thread = threading.Thread(target=self._supervise, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        pause = _FIRST_PAUSE
        while not self._stopping.is_set():
            self.running = True
            started = time.monotonic()
            try:
                self._target()
            except Exception:
                log.exception("loop_died loop=%s restart_in=%.1fs", self.name, pause)
            else:
                if self._stopping.is_set():
                    break
                log.error("loop_ended loop=%s restart_in=%.1fs", self.name, pause)
            self.running = False
            self.restarts += 1
            if time.monotonic() - started > _LONGEST_PAUSE:
                pause = _FIRST_PAUSE  # it had been healthy: not a crash loop
            if self._stopping.wait(pause):
                break
            pause = min(pause * 2, _LONGEST_PAUSE)
        self.running = False
