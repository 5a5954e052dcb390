"""GET /openapi.json stays true to the app (docs/rest-api.md "OpenAPI document").

The document is a valid OpenAPI 3.1 document; it describes every route of the app with every
method, and nothing the app does not route; the routes it says need a token answer 401
without one, and the others do not; and each limit it states is the one the code enforces.
What the live server answers is checked against it in
tests/integration/test_live_schemathesis.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from blueprints import messages
from gateway import app as gateway_app
from gateway.accounts import store
from gateway.http import bodies, openapi, openapi_components, openapi_schemas
from gateway.transport import sse

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# Flask answers these itself for every route; the document describes what the app routes.
IMPLICIT = {"HEAD", "OPTIONS"}


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def routed(app) -> set[tuple[str, str]]:
    """Every (path, method) the app routes, with Flask's <path:name> written {name}."""
    return {
        (re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - IMPLICIT
    }


def described(document) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"].startswith("3.1.")


def test_the_document_works_from_any_host(document):
    assert document["servers"] == [{"url": "/"}]


def test_every_route_of_the_app_is_described(app, document):
    missing = routed(app) - described(document)
    assert not missing, f"routes missing from gateway/http/openapi.py: {sorted(missing)}"


def test_the_document_describes_only_routes_of_the_app(app, document):
    unrouted = described(document) - routed(app)
    assert not unrouted, f"described but not routed: {sorted(unrouted)}"


def test_path_parameters_are_the_rules_variables(document):
    for path, item in document["paths"].items():
        named = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == named, (method, path)


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_token_routes_are_those_that_answer_401_without_one(client, document):
    for path, method, operation in operations(document):
        url = path.format(name="nope", username="nobody", filename="nothing.js")
        response = client.open(url, method=method.upper(), json={})
        # An empty requirement makes the token optional (/metrics without METRICS_TOKEN).
        needs_token = bool(operation["security"]) and {} not in operation["security"]
        assert (response.status_code == 401) == needs_token, (method, path, response.status_code)
        if needs_token:
            assert "401" in operation["responses"], (method, path)


def test_every_answer_documents_the_error_shape_or_its_own(document):
    """Every 4xx and 5xx is the one error shape; /readyz's 503 says which checks fail."""
    shared = document["components"]["responses"]
    for path, _, operation in operations(document):
        for status, answer in operation["responses"].items():
            if "$ref" in answer:
                answer = shared[answer["$ref"].rsplit("/", 1)[-1]]
            if status >= "400" and (path, status) != ("/readyz", "503"):
                schema = answer["content"]["application/json"]["schema"]["$ref"]
                assert schema.rsplit("/", 1)[-1] in {"Error", "RateLimited", "LimitExceeded"}


def test_the_server_sent_events_are_an_event_stream(document):
    answer = document["paths"]["/topics/{name}/events"]["get"]["responses"]["200"]
    assert list(answer["content"]) == ["text/event-stream"]


# The limits the document states are the ones the code enforces.


def test_names_follow_the_codes_rules():
    assert f"^{bodies._TOPIC_NAME.pattern}$" == openapi_schemas.TOPIC_NAME
    assert f"^{store._USERNAME.pattern}$" == openapi_schemas.USERNAME
    assert store.ROLES == openapi_schemas.ROLES
    request_id = openapi_components.components()["headers"]["X-Request-ID"]["schema"]
    assert f"^{gateway_app._REQUEST_ID.pattern}$" == request_id["pattern"]


@pytest.mark.parametrize("octets, valid", [(7, False), (8, True), (72, True), (73, False)])
def test_password_bounds_are_the_codes(octets, valid):
    low, high = openapi_schemas.PASSWORD_BYTES
    assert (low <= octets <= high) is valid
    body = {"username": "someone", "password": "p" * octets}
    if valid:
        store.validate_registration(body)
    else:
        with pytest.raises(store.ValidationError):
            store.validate_registration(body)


def test_messages_limits_are_the_codes():
    largest = openapi_schemas.SEQ_MAX
    assert messages._SEQ.fullmatch(str(largest))
    assert not messages._SEQ.fullmatch(str(largest + 1))
    assert messages.MAX_LIMIT == openapi.HISTORY_LIMIT_MAX
    key = openapi_schemas.IDEMPOTENCY_KEY["pattern"]
    assert f"^{messages._IDEMPOTENCY_KEY.pattern}$" == key


def test_the_stream_s_events_are_the_codes():
    source = (ROOT / "gateway" / "transport" / "sse.py").read_text()
    sent = set(re.findall(r'encode\("(\w+)"', source))
    sent |= {sse.TOPIC_DELETED, sse.ACCESS_REVOKED, sse.SHUTDOWN}
    assert sent == set(openapi_schemas.SSE_EVENTS)


def test_the_version_is_the_projects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == openapi.VERSION
