"""The gunicorn worker: gevent's, with gunicorn's own error answers in the gateway's JSON shape.

A request that gunicorn cannot parse (junk instead of a request line, a bad header, a line
too long) never reaches Flask: gunicorn answers it itself, with an HTML page. Clients of the
gateway get the one error shape everywhere (README, REST API), so the worker has gunicorn
write `{"error": "..."}` instead, with the status gunicorn chose.

gunicorn's `Worker.handle_error` calls the module function `gunicorn.util.write_error`; it is
replaced in the worker process only, when the worker starts (tests/test_worker.py pins the
signature this relies on).
"""

from __future__ import annotations

import orjson
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker


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
    util.write_nonblock(sock, head.encode("latin-1") + body)


class GatewayWorker(GeventWorker):
    """gunicorn's gevent worker whose own error answers are JSON."""

    def init_process(self) -> None:
        util.write_error = write_json_error
        super().init_process()
