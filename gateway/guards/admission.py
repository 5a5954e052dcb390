"""Who may open what: the connection limits every path applies (docs/configuration.md "Limits").

Checked where the input enters, before any state is spent: a WebSocket upgrade or an SSE
request is refused with an HTTP status before it becomes a connection.
"""

from __future__ import annotations

import logging

from flask import Flask, g

from gateway import metrics
from gateway.brokers import Broker, LimitExceeded
from gateway.http.errors import ApiError
from gateway.state import get_broker, get_registry, get_settings

log = logging.getLogger("gateway.http")

# What a client refused at the connection cap is told to wait before trying again.
RETRY_AFTER_CAPACITY = 5


class Claim:
    """One connection counted against its user's MAX_CONNECTIONS_PER_USER; released once."""

    __slots__ = ("_broker", "_held", "_user")

    def __init__(self, broker: Broker, user: str) -> None:
        self._broker = broker
        self._user = user
        self._held = True

    def release(self) -> None:
        """Stop counting the connection (the first call only)."""
        if not self._held:
            return
        self._held = False
        try:
            self._broker.release_connection(self._user)
        except Exception:  # noqa: BLE001 - the broker's heartbeat repairs its counts
            log.warning("release_connection_failed user=%s", self._user, exc_info=True)


def admit_connection(user_id: str, transport: str) -> None:
    """Admit one more WebSocket or SSE stream of `user_id`, or raise (503, 429).

    The worker's capacity (503 + Retry-After) comes first, then MAX_CONNECTIONS_PER_USER,
    counted across every worker that shares the broker (429, LIMIT_EXCEEDED). The request
    then holds a Claim: the connection takes it over (`take_claim`) once it exists, or the
    request's teardown gives it back.
    """
    registry = get_registry()
    if registry.at_capacity():
        log.warning(
            "%s_rejected status=503 reason=capacity connections=%d", transport, registry.count()
        )
        raise ApiError(
            503,
            "server is at its connection limit; retry shortly",
            retry_after=RETRY_AFTER_CAPACITY,
        )
    broker = get_broker()
    limit = get_settings().max_connections_per_user
    if not broker.claim_connection(user_id, limit):
        log.info("%s_rejected status=429 reason=connections_per_user limit=%d", transport, limit)
        metrics.rate_limited("connections")
        raise LimitExceeded(f"you already have the maximum of {limit} open connections")
    g.connection_claim = Claim(broker, user_id)


def take_claim() -> Claim:
    """Hand the request's Claim to the connection that now exists; it releases it at its end."""
    return g.pop("connection_claim")


def init_app(app: Flask) -> None:
    """Give back, at the end of every request, a Claim that no connection took over."""

    @app.teardown_request
    def release_unused_claim(exc: BaseException | None) -> None:
        claim = g.pop("connection_claim", None)
        if claim is not None:
            claim.release()
