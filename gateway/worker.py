"""The gunicorn worker: gevent's, with gunicorn's own error answers in the gateway's JSON shape.

A request that gunicorn cannot parse (junk instead of a request line, a bad header, a line
too long) never reaches Flask: gunicorn answers it itself, with an HTML page. Clients of the
gateway get the one error shape everywhere (docs/rest-api.md), so the worker has gunicorn
write `{"error": "..."}` instead, with the status gunicorn chose.

The replacement happens in the worker process only, when the worker starts, through
gateway.transport.libraries (where every library internal the gateway uses is kept).
"""

from __future__ import annotations

import orjson
from gunicorn.workers.ggevent import GeventWorker

from gateway.transport import libraries


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's error answer as `{"error": "<reason>: <detail>"}` and close."""
    text = f"{reason}: {mesg}" if mesg else reason
    body = orjson.dumps({"error": text})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    libraries.write_nonblock(sock, head.encode("latin-1") + body)


class GatewayWorker(GeventWorker):
    """gunicorn's gevent worker whose own error answers are JSON, and which quits quietly."""

    def handle_quit(self, sig, frame) -> None:
        """SIGINT or SIGQUIT (Ctrl-C, a quick stop): leave the run loop, as gunicorn does.

        gunicorn's gevent worker ends its quit with `sys.exit(0)` in a spawned greenlet,
        which gevent reports as a failed greenlet, with a traceback, after a clean exit
        (benoitc/gunicorn#3239). Ending the run loop is enough: the worker then exits
        within a second, and the app drains its WebSockets at exit as on SIGTERM.
        """
        self.alive = False
        self.cfg.worker_int(self)

    def init_process(self) -> None:
        libraries.answer_gunicorn_errors_with(write_json_error)
        super().init_process()
