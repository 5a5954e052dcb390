"""`gw sub TOPIC`: follow a topic, one JSON message per stdout line, across reconnects.

After a dropped connection it reconnects with capped exponential backoff and resumes with
`since_seq` and `epoch` (docs/protocol.md#reconnecting-without-losing-messages), printing
no message twice; whatever could not be recovered (`recovered: false`, a new epoch,
`info`/`dropped` ranges) is said on stderr. The first connection is not retried: a gateway
that cannot be reached at the start is an error (exit 3), not something to wait for.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import orjson

from gateway.client.errors import AccessRevoked, Refused, TopicGone, Unreachable
from gateway.client.wsconn import Connection, ConnectionLost, subscribe_frame

# A connection up for this long counts as working: the reconnect delays start again after it.
STABLE_SECONDS = 10.0


class Backoff:
    """Capped exponential delays, base × 2^n up to `cap`, each jittered down by up to half."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        """Return the delay before the next attempt, and count the attempt."""
        ceiling = min(self.cap, self.base * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 62)  # past the cap anyway; keeps 2**n small
        # Jitter spreads the reconnects of many clients dropped by one restart.
        return ceiling * (0.5 + self._rng() / 2)

    def reset(self) -> None:
        """Start again from `base` (after a connection that worked)."""
        self._attempt = 0


@dataclass
class Position:
    """Where the printed stream stands: the topic's epoch and the last seq printed.

    Not `exact` while the seq is only an estimate (before the first event of a `--last-n`
    replay, after a gap): the next event then sets it, without a gap or duplicate check.
    """

    epoch: str
    seq: int
    exact: bool = True


class Follower:
    """Print a topic's messages to `out` and report gaps and reconnects on `err`."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        topic: str,
        out: BinaryIO,
        err: TextIO,
        *,
        last_n: int = 0,
        since_seq: int | None = None,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.topic = topic
        self._out = out
        self._err = err
        self._last_n = last_n
        self._since_seq = since_seq
        self._timeout = timeout
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self.position: Position | None = None  # None until the first subscribe is acked

    def run(self) -> None:
        """Follow the topic until it is deleted or revoked (raises), or Ctrl-C."""
        while True:
            try:
                connection = self._connect()
            except (Unreachable, Refused) as exc:
                if self.position is None:
                    raise
                self._wait(str(exc))
                continue
            subscribed_at = None
            try:
                with connection:
                    self._subscribe(connection)
                    subscribed_at = self._clock()
                    self._pump(connection)
            except ConnectionLost as lost:
                if self.position is None:
                    raise Unreachable(f"{lost} while subscribing to '{self.topic}'") from None
                # Only a connection that lasted starts the delays again: a gateway that
                # accepts and drops at once is not hammered every half second.
                if subscribed_at is not None and self._clock() - subscribed_at >= STABLE_SECONDS:
                    self._backoff.reset()
                self._wait(str(lost))

    def _wait(self, reason: str) -> None:
        delay = self._backoff.next()
        self._say(f"{reason}; reconnecting in {delay:.1f}s")
        self._sleep(delay)

    def _subscribe(self, connection: Connection) -> None:
        request_id = connection.next_request_id("sub")
        position = self.position
        if position is not None:
            frame = subscribe_frame(
                self.topic, request_id, since_seq=position.seq, epoch=position.epoch
            )
        else:
            frame = subscribe_frame(
                self.topic, request_id, last_n=self._last_n, since_seq=self._since_seq
            )
        connection.send(frame)
        reply = connection.reply(request_id, self._timeout)
        if reply is None:
            raise ConnectionLost(None, f"no answer to the subscribe within {self._timeout:g}s")
        if reply.get("type") == "error":
            self._refused(reply.get("error") or {})
        self._acked(reply)

    def _refused(self, error: dict) -> None:
        code, message = error.get("code"), error.get("message", "refused")
        if self.position is not None and code == "TOPIC_NOT_FOUND":
            raise TopicGone(
                f"topic '{self.topic}' no longer exists: deleted while disconnected, or the "
                "gateway restarted and lost it (the memory broker keeps no topics)"
            )
        if self.position is not None and code == "FORBIDDEN":
            raise AccessRevoked(f"access to topic '{self.topic}' was revoked: {message}")
        raise Refused(f"{message} ({code})")

    def _acked(self, ack: dict) -> None:
        epoch, seq, recovered = ack.get("epoch", ""), int(ack.get("seq", 0)), ack.get("recovered")
        before = self.position
        if before is None:
            if self._since_seq is None:
                start = max(seq - self._last_n, 0)
                self.position = Position(epoch, start, exact=self._last_n == 0)
                return
            self.position = Position(epoch, self._since_seq)
            if recovered is False:
                self._lost_history(self._since_seq)
            return
        if epoch != before.epoch:
            self._say(
                f"the stream of '{self.topic}' restarted (a new epoch: the topic was created "
                "again, or the gateway restarted without its history); messages after seq "
                f"{before.seq} of the old stream may be lost; following the new one"
            )
            self.position = Position(epoch, 0, exact=False)
        elif recovered is False and before.exact:
            self._lost_history(before.seq)
        elif before.exact:
            self._say(f"resumed '{self.topic}' after seq {before.seq}; nothing lost")

    def _lost_history(self, after: int) -> None:
        self._say(
            f"lost messages of '{self.topic}': the gateway's history no longer holds every "
            f"message after seq {after} (recovered: false)"
        )
        assert self.position is not None
        self.position.exact = False

    def _pump(self, connection: Connection) -> None:
        while True:
            frame = connection.recv(1.0)
            if not frame:
                continue
            kind = frame.get("type")
            if kind == "event" and frame.get("topic") == self.topic:
                self._event(frame.get("message"))
            elif kind == "info":
                self._info(frame)

    def _event(self, message: object) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("seq"), int):
            return
        seq, position = message["seq"], self.position
        assert position is not None
        if position.exact and seq <= position.seq:
            return  # already printed before a reconnect
        if position.exact and seq > position.seq + 1:
            self._say(
                f"lost {seq - position.seq - 1} message(s) of '{self.topic}' "
                f"(seq {position.seq + 1}-{seq - 1})"
            )
        self._out.write(orjson.dumps(message) + b"\n")
        self._out.flush()
        position.seq, position.exact = seq, True

    def _info(self, frame: dict) -> None:
        msg = frame.get("msg")
        if msg == "dropped" and frame.get("topic") == self.topic:
            first, last = frame.get("from_seq"), frame.get("to_seq")
            self._say(
                f"lost {frame.get('count')} message(s) of '{self.topic}' (seq {first}-{last}): "
                "this client read too slowly"
            )
            if self.position is not None and isinstance(last, int):
                self.position.seq = max(self.position.seq, last)
        elif msg == "topic_deleted" and frame.get("topic") == self.topic:
            raise TopicGone(f"topic '{self.topic}' was deleted")
        elif msg == "access_revoked" and frame.get("topic") == self.topic:
            raise AccessRevoked(f"access to topic '{self.topic}' was revoked")
        elif msg == "shutdown":
            self._say("the gateway is shutting down")

    def _say(self, text: str) -> None:
        self._err.write(f"gw: {text}\n")
        self._err.flush()
