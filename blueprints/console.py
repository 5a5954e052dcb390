"""The web console (docs/console.md): one static page, its assets, and whether its origin may connect."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, redirect, request, send_from_directory

from gateway.http.bodies import json_response
from gateway.http.errors import ApiError
from gateway.state import get_settings

bp = Blueprint("console", __name__)

STATIC = Path(__file__).resolve().parents[1] / "gateway" / "console" / "static"
# A Host header we may echo into the CSP: a name or an IPv6 literal, and a port. Anything
# else (a header crafted to inject directives) falls back to 'self' alone.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_ORIGIN = re.compile(r"https?://[^\s/?#]{1,260}")


def content_security_policy(host: str) -> str:
    """Return the page's CSP: only its own scripts, styles and connections, nothing inline."""
    connect = "'self'"
    if _HOST.fullmatch(host):
        # CSP3 lets 'self' match ws: and wss: of the page's host; older browsers need them
        # spelled out. Behind a proxy that rewrites Host, 'self' is what still applies.
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


@bp.after_request
def secure_headers(response):
    """Send the CSP and the headers that keep the page in its own origin and up to date."""
    headers = response.headers
    headers["Content-Security-Policy"] = content_security_policy(request.host)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    # File names carry no version: revalidate every load (a 304 thanks to the ETag) so a
    # page never runs stale JavaScript against a newer gateway.
    if "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/console")
def page():
    """Serve the console page."""
    return send_from_directory(STATIC, "index.html")


@bp.get("/console/")
def page_with_slash():
    """Redirect to /console, where the page's relative URLs resolve to the gateway's routes."""
    return redirect("../console", 308)


@bp.get("/console/config.json")
def config():
    """Tell the page whether /ws would accept its origin (ALLOWED_CORS_ORIGIN, docs/rest-api.md)."""
    origin = request.args.get("origin", "")
    if not _ORIGIN.fullmatch(origin):
        raise ApiError(400, "origin must be the page's origin, for example http://host:8000")
    allowed = get_settings().origin_allowed(origin)
    response = json_response({"origin": origin, "origin_allowed": allowed})
    response.headers["Cache-Control"] = "no-store"  # follows the settings of the running gateway
    return response


@bp.get("/console/<path:filename>")
def asset(filename: str):
    """Serve one of the console's static files (404 outside its folder)."""
    return send_from_directory(STATIC, filename)
