"""Who may do what with a topic (docs/access.md): every access decision, in one place.

A topic's creator owns it; its `publish` policy is anyone, members or owner, its
`subscribe` policy anyone or members; the owner always counts as a member. Admins may do
anything. The REST blueprints, the SSE endpoint and the WebSocket session all decide here,
through `allowed` and `run_as`, and nowhere else.

The brokers keep each topic's Access and run the checks built here where they decide
atomically (under the memory broker's lock; around the Redis broker's registration), so a
decision and the act it allows cannot be separated by a change of members.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from gateway.brokers import Access, Check

T = TypeVar("T")

SUBSCRIBE = "subscribe"  # WebSocket subscribe, SSE, history
PUBLISH = "publish"  # WebSocket and HTTP publish
DELETE = "delete"  # DELETE /topics/<name>
MANAGE_MEMBERS = "manage members"  # PUT and DELETE /topics/<name>/members/<username>
SEE_MEMBERS = "see members"  # GET /topics/<name>/members

_REFUSALS = {
    SUBSCRIBE: "only members may read topic {topic!r}",
    PUBLISH: "you may not publish to topic {topic!r}",
    DELETE: "only the owner of topic {topic!r} or an admin may delete it",
    MANAGE_MEMBERS: "only the owner of topic {topic!r} or an admin may change its members",
    SEE_MEMBERS: "only members of topic {topic!r} may see its members",
}


class Forbidden(Exception):
    """The caller may not do this with this topic: HTTP 403, WebSocket FORBIDDEN."""


def allowed(action: str, access: Access, user: str | None, admin: bool = False) -> bool:
    """Tell whether `user` may do `action` with a topic whose access is `access`."""
    if admin or (user is not None and user == access.owner):
        return True
    member = user in access.members
    if action == SUBSCRIBE:
        return access.subscribe == "anyone" or member
    if action == PUBLISH:
        return access.publish == "anyone" or (access.publish == "members" and member)
    if action == SEE_MEMBERS:
        return member
    return False  # DELETE and MANAGE_MEMBERS: the owner's (or an admin's)


def check(action: str, user: str | None, topic: str) -> Check:
    """Return the check a broker runs on the topic's Access: raises Forbidden to refuse."""

    def run(access: Access) -> None:
        if not allowed(action, access, user):
            raise Forbidden(_REFUSALS[action].format(topic=topic))

    return run


def run_as(
    action: str, user: str | None, topic: str, roles: Roles, call: Callable[[Check | None], T]
) -> T:
    """Do `call` with the check of `action` for `user`; an admin refused by it does it anyway.

    The role is only looked up on a refusal, so the common case costs no database query.
    """
    try:
        return call(check(action, user, topic))
    except Forbidden:
        if user is None or not roles.is_admin(user):
            raise
        return call(None)


def require(action: str, access: Access, user: str | None, topic: str, roles: Roles) -> None:
    """Raise Forbidden unless `user` may do `action` (an admin always may)."""
    if not allowed(action, access, user) and (user is None or not roles.is_admin(user)):
        raise Forbidden(_REFUSALS[action].format(topic=topic))


def revokes_reading(access: Access, user: str, roles: Roles) -> bool:
    """Tell whether taking `user` off the members leaves them unable to subscribe."""
    after = replace(access, members=access.members - {user})
    return not allowed(SUBSCRIBE, after, user) and not roles.is_admin(user)


class Roles:
    """Who is an admin, from the user store, remembered for ROLE_SECONDS.

    A demotion or promotion (flask users promote/demote) takes effect within that time.
    """

    ROLE_SECONDS = 2.0

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        self._lookup = lookup  # user id -> role, or None for an unknown user
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, bool]] = {}

    def is_admin(self, user: str) -> bool:
        """Tell whether `user` is an admin now (within ROLE_SECONDS)."""
        now = time.monotonic()
        with self._lock:
            known = self._known.get(user)
        if known is not None and known[0] > now:
            return known[1]
        admin = self._lookup(user) == "admin"
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()  # a bound, not a policy: entries live seconds
            self._known[user] = (now + self.ROLE_SECONDS, admin)
        return admin


# For callers with no user store behind them (tests, tools): nobody is an admin.
NO_ADMINS = Roles(lambda user: None)
