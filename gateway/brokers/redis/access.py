"""Topic access in Redis: owner, policies and members, read fresh or from a short cache.

A subscribe, a delete and the members routes read a topic's access fresh, in the same round
trip as what they read anyway. A publish, the hot path, checks against a copy at most
ACCESS_SECONDS old: a member change reaches every worker's publishes within that time, and
at once on workers that listen to the topic's channel (the "access" and "revoked" notices
drop the copy). Revocation itself never waits: it travels on the channel (gateway.brokers.
redis.listener).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import redis

from gateway.brokers.contract import Access, Check, TopicNotFound
from gateway.brokers.redis.scripts import MEMBER, Keys

ACCESS_SECONDS = 1.0


class Known(NamedTuple):
    """A topic's access and the creation (epoch) it belongs to: a name deleted and created
    again is another topic, and the scripts refuse an access checked against the old one."""

    access: Access
    epoch: str


class AccessStore:
    """Reads and changes of topic access in Redis, with this worker's short-lived copies."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._member_script = client.register_script(MEMBER)
        self._copies: dict[str, tuple[float, Known]] = {}

    def queue_read(self, pipe, name: str) -> None:
        """Add the reads of `name`'s access to `pipe` (four results, for `parse`)."""
        keys = self._keys
        pipe.hget(keys.topics, name)
        pipe.hget(keys.of("owners", ""), name)
        pipe.hget(keys.of("policies", ""), name)
        pipe.smembers(keys.of("members", name))

    def parse(self, name: str, results: list) -> Known:
        """Build the access from `queue_read`'s four results (and keep it); raise TopicNotFound."""
        epoch, owner, policies, members = results
        if not epoch:
            self._copies.pop(name, None)
            raise TopicNotFound(name)
        # A topic created by an older gateway has no policies: open, as it was.
        publish, _, subscribe = (policies or b"anyone anyone").decode().partition(" ")
        access = Access(
            (owner or b"").decode() or None,
            publish,
            subscribe or "anyone",
            frozenset(m.decode() for m in members),
        )
        known = Known(access, epoch.decode())
        self._copies[name] = (time.monotonic() + ACCESS_SECONDS, known)
        return known

    def read(self, name: str) -> Known:
        """Return `name`'s access as Redis holds it now; raise TopicNotFound."""
        pipe = self._redis.pipeline(transaction=False)
        self.queue_read(pipe, name)
        return self.parse(name, pipe.execute())

    def recent(self, name: str) -> Known:
        """Return `name`'s access, from this worker's copy if it is under ACCESS_SECONDS old."""
        copy = self._copies.get(name)
        if copy is not None and copy[0] > time.monotonic():
            return copy[1]
        return self.read(name)

    def checked(self, name: str, check: Check) -> str:
        """Run a publish's `check` on `name`'s access; return the epoch it belongs to.

        This worker's copy (at most ACCESS_SECONDS old) decides an acceptance; a refusal is
        confirmed against Redis first, so a stale copy never refuses what is now allowed.
        """
        known = self.recent(name)
        try:
            check(known.access)
        except Exception:
            known = self.read(name)
            check(known.access)
        return known.epoch

    def forget(self, name: str) -> None:
        """Drop this worker's copy of `name`'s access (it changed, or the topic is gone)."""
        self._copies.pop(name, None)

    def change(self, name: str, user: str, add: bool, revoke: bool = False) -> None:
        """Add or remove a member, and tell every worker; raise TopicNotFound."""
        args = [name, "add" if add else "remove", user, "1" if revoke else "0"]
        done = self._member_script(keys=self._keys.access(name), args=args)
        self.forget(name)
        if not done:
            raise TopicNotFound(name)
