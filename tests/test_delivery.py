"""The helpers WebSocket sessions and SSE streams share: holding during a replay, drop counts."""

from __future__ import annotations

from gateway.brokers import Event
from gateway.transport.delivery import Holding, Losses


def ev(topic: str, seq: int) -> Event:
    return Event(topic, f"m{seq}", b"null", seq, 0.0)


def test_holding_passes_on_only_what_the_replay_did_not_cover_in_order():
    holding = Holding()
    assert not holding
    holding.begin("a")
    assert holding
    assert not holding.hold(ev("b", 1))  # another topic goes straight through
    for seq in (4, 5, 6, 7):
        assert holding.hold(ev("a", seq))
    emitted = []
    holding.release("a", 5, lambda event: emitted.append(event.seq))
    assert emitted == [6, 7]
    assert not holding and not holding.hold(ev("a", 8))


def test_holding_stays_on_until_the_last_held_event_is_emitted():
    holding = Holding()
    holding.begin("a")
    holding.hold(ev("a", 2))
    during = []
    holding.release("a", 1, lambda event: during.append(bool(holding)))
    assert during == [True]  # a concurrent deliver would still be held, not jump the queue


def test_a_cancelled_subscribe_forgets_its_held_events():
    holding = Holding()
    holding.begin("a")
    holding.hold(ev("a", 1))
    holding.cancel("a")
    assert not holding
    holding.cancel("a")  # twice is harmless


def test_losses_count_each_topics_range_and_forget_once_told():
    losses = Losses()
    assert not losses and losses.take("a") is None
    for seq in (3, 4, 9):
        losses.record("a", seq)
    losses.record("b", 1)
    assert losses.take("a") == (3, 3, 9)
    assert losses.take("a") is None
    assert losses.take_all() == [("b", 1, 1, 1)]
    assert not losses
