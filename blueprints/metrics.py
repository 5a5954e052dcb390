"""`GET /metrics`: the Prometheus scrape (docs/operations.md "Metrics")."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, request

from gateway import metrics
from gateway.http.errors import ApiError
from gateway.state import get_sampler, get_settings

bp = Blueprint("metrics", __name__)
log = logging.getLogger("gateway.http")


@bp.get("/metrics")
def scrape():
    """Answer every metric of this host's workers in the Prometheus text format.

    With METRICS_TOKEN set, the scraper must send it as a Bearer token.
    """
    token = get_settings().metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            log.info("metrics_refused reason=%s", "no token" if not given else "wrong token")
            raise ApiError(401, "a valid METRICS_TOKEN is required as a Bearer token")
    get_sampler().refresh()
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
