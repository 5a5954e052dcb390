"""What every kind of subscriber does alike: hold live events during a replay, count drops.

A WebSocket session (gateway.transport.session) and an SSE stream (gateway.transport.sse)
keep the same two promises of docs/delivery.md, each in its own queue and under its own
lock:
- the replay of a subscribe comes before any live event of that topic, with no gap and no
  duplicate: `Holding`;
- a full queue drops its oldest event, and the client is told how many and which seqs in one
  `dropped` notice before that topic's next event: `Losses`.
Neither class locks: the caller holds its own lock around every call.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway import metrics
from gateway.brokers import Event


class Holding:
    """Live events that arrived while their topic's subscribe was being answered.

    `begin(topic)` before the broker's `subscribe` (which may deliver at once, from another
    thread or greenlet), `hold(event)` in `deliver`, and once the ack and the replay are
    queued, `release(topic, seq, emit)` passes on the held events the replay did not cover.
    """

    __slots__ = ("_topics",)

    def __init__(self) -> None:
        self._topics: dict[str, list[Event]] = {}

    def __bool__(self) -> bool:
        """True while some subscribe is in flight (cheap to test without the lock)."""
        return bool(self._topics)

    def begin(self, topic: str) -> None:
        """Start holding `topic`'s live events."""
        self._topics[topic] = []

    def hold(self, event: Event) -> bool:
        """Keep `event` if its topic is being held; tell whether it was."""
        held = self._topics.get(event.topic)
        if held is None:
            return False
        held.append(event)
        return True

    def cancel(self, topic: str) -> None:
        """Forget `topic`'s held events: its subscribe failed."""
        self._topics.pop(topic, None)

    def release(self, topic: str, replayed_to: int, emit: Callable[[Event], None]) -> None:
        """Pass each held event newer than the replay (seq > `replayed_to`) to `emit`, in order.

        The topic stops being held only after the last one is emitted: a `deliver` that
        finds nothing held writes straight to the queue, and must queue after them.
        """
        for event in self._topics[topic]:
            if event.seq > replayed_to:
                emit(event)
        del self._topics[topic]


class Losses:
    """Events dropped per topic since the client was last told: count, first and last seq."""

    __slots__ = ("_topics",)

    def __init__(self) -> None:
        self._topics: dict[str, list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self._topics)

    def record(self, topic: str, seq: int) -> None:
        """Count the drop of `topic`'s event `seq` (drops are oldest first)."""
        metrics.dropped(1)
        lost = self._topics.get(topic)
        if lost is None:
            self._topics[topic] = [1, seq, seq]
        else:
            lost[0] += 1
            lost[2] = seq

    def take(self, topic: str) -> tuple[int, int, int] | None:
        """Return (count, from_seq, to_seq) of `topic`'s drops and forget them; None if none."""
        lost = self._topics.pop(topic, None)
        return (lost[0], lost[1], lost[2]) if lost else None

    def take_all(self) -> list[tuple[str, int, int, int]]:
        """Return (topic, count, from_seq, to_seq) for every topic with drops, and forget them."""
        found = [(topic, *lost) for topic, lost in self._topics.items()]
        self._topics.clear()
        return found
