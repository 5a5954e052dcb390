"""`gw pub TOPIC -`: one JSON value per stdin line, published in order on one WebSocket.

Stop-and-wait: each line is sent once the previous one is acknowledged, so the order is the
input's, a refusal names exactly the line refused, and nothing after it has been sent. A line
that is not JSON stops the run there (exit 5): skipping it would publish the lines around it
as if it had never been written, and the caller can restart from the line it names.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import BinaryIO

import orjson

from gateway.client.errors import BadInput, Refused, Unreachable
from gateway.client.wsconn import Connection, ConnectionLost, publish_frame

# A publish refused with RATE_LIMITED is sent again after the wait its message names
# ("retry in 0.01s", docs/protocol.md#error-codes): it spent no seq, so the order holds.
_RETRY_IN = re.compile(r"retry in ([0-9.]+)\s*s")
_LONGEST_RETRY_WAIT = 5.0


def retry_delay(message: str) -> float:
    """Return the wait a RATE_LIMITED message asks for (1 s if it names none), at most 5 s."""
    found = _RETRY_IN.search(message)
    try:
        delay = float(found.group(1)) if found else 1.0
    except ValueError:
        delay = 1.0
    return min(max(delay, 0.0), _LONGEST_RETRY_WAIT)


class LinePublisher:
    """Publish the JSON lines of a stream to one topic over an open connection."""

    def __init__(
        self,
        connection: Connection,
        topic: str,
        out: BinaryIO,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._out = out
        self._timeout = timeout
        self._sleep = sleep
        self.published = 0

    def run(self, lines: Iterable[bytes]) -> int:
        """Publish every non-blank line in order; return how many were published."""
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, spacing) carry no message
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadInput(
                    f"stdin line {number} is not valid JSON ({exc.msg} at column {exc.colno}); {self._so_far()}, "
                    "nothing from this line on was sent"
                ) from None
            self._publish(number, payload)
        return self.published

    def _publish(self, number: int, payload: object) -> None:
        frame = publish_frame(self._topic, payload, uuid.uuid4().hex, f"line-{number}")
        while True:
            reply = self._exchange(number, frame)
            if reply.get("type") == "ack":
                self.published += 1
                answer = {"topic": self._topic, "id": frame["message"]["id"], "seq": reply["seq"]}
                self._out.write(orjson.dumps(answer) + b"\n")
                self._out.flush()
                return
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            code, message = error.get("code"), str(error.get("message", "refused"))
            if code == "RATE_LIMITED":
                self._sleep(retry_delay(message))
                continue
            raise Refused(f"stdin line {number} was refused: {message} ({code}); {self._so_far()}")

    def _exchange(self, number: int, frame: dict) -> dict:
        """Send the line's frame and return the ack or error answering it."""
        try:
            self._connection.send(frame)
        except ConnectionLost as lost:
            raise Unreachable(
                f"{lost}: stdin line {number} was not sent; {self._so_far()}"
            ) from None
        try:
            reply = self._connection.reply(frame["request_id"], self._timeout)
        except ConnectionLost as lost:
            if lost.code == 1009:
                raise Refused(
                    f"stdin line {number} is larger than the gateway accepts "
                    f"(MAX_MESSAGE_BYTES); {self._so_far()}"
                ) from None
            raise Unreachable(
                f"{lost} before stdin line {number} was acknowledged: it may or may not have "
                f"been published; {self._so_far()}"
            ) from None
        if reply is None:
            raise Unreachable(
                f"no answer to stdin line {number} within {self._timeout:g}s: it may or may "
                f"not have been published; {self._so_far()}"
            )
        return reply

    def _so_far(self) -> str:
        count = self.published
        return f"{count} message{'' if count == 1 else 's'} published before it"
