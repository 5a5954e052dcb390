"""Who may open what: the connection limits every path applies (README "Limits").

Checked where the input enters, before any state is spent: a WebSocket upgrade or an SSE
request is refused with an HTTP status before it becomes a connection.
"""

from __future__ import annotations

import logging

from flask import g

from gateway.errors import LIMIT_EXCEEDED, ApiError
from gateway.state import get_broker, get_hub, get_settings

log = logging.getLogger("gateway.http")

# What a client refused at the connection cap is told to wait before trying again.
RETRY_AFTER_CAPACITY = 5


def admit_connection(user_id: str, transport: str) -> None:
    """Admit one more WebSocket or SSE stream of `user_id`, or raise ApiError (503, 429).

    The worker's capacity (503 + Retry-After) comes first, then MAX_CONNECTIONS_PER_USER,
    counted across every worker that shares the broker (429, LIMIT_EXCEEDED). A request
    admitted here holds a claim until `release_claim` runs: the connection takes it over
    (`g.connection_claimed = False`) or the request's teardown gives it back.
    """
    hub = get_hub()
    if hub.at_capacity():
        log.warning("%s_rejected status=503 reason=capacity connections=%d", transport, hub.count())
        raise ApiError(
            503,
            "server is at its connection limit; retry shortly",
            retry_after=RETRY_AFTER_CAPACITY,
        )
    limit = get_settings().max_connections_per_user
    if not get_broker().claim_connection(user_id, limit):
        log.info("%s_rejected status=429 reason=connections_per_user limit=%d", transport, limit)
        raise ApiError(
            429, f"you already have the maximum of {limit} open connections", LIMIT_EXCEEDED
        )
    g.connection_claimed = True


def release_claim() -> None:
    """Give back a claim made by `admit_connection` that no connection took over."""
    if g.pop("connection_claimed", False):
        get_broker().release_connection(g.user_id)
