"""The OpenAPI document of the HTTP routes (docs/rest-api.md "OpenAPI document")."""

from __future__ import annotations

from flask import Blueprint

from gateway.http import openapi
from gateway.http.bodies import json_response

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def document():
    """Serve the OpenAPI 3.1 document; its one server is "/", so it works behind any host."""
    return json_response(openapi.document())
