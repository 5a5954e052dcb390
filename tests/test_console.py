"""The web console's page and assets (docs/console.md), through Flask's test client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "gateway" / "console" / "static"

REQUIRED_TESTIDS = (
    "login-username",
    "login-password",
    "login-submit",
    "register-submit",
    "topic-name",
    "subscribe-submit",
    "publish-payload",
    "publish-submit",
    "publish-error",
    "event-log",
    "connection-state",
    "topic-list",
    "create-name",
    "create-publish",
    "create-subscribe",
    "create-submit",
    "notices",
    "origin-warning",
)
ASSETS = {
    "/console/console.js": ("text/javascript", "application/javascript"),
    "/console/console.css": ("text/css",),
    "/console/favicon.svg": ("image/svg+xml",),
}
# http(s):// URLs in the shipped files. The SVG namespace names a format, it is never fetched.
_URL = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*")
_NAMESPACES = {"http://www.w3.org/2000/svg"}


def csp_directives(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    directives = (part.split() for part in policy.split(";") if part.strip())
    return {name: values for name, *values in directives}


def test_the_page_has_every_control_the_browser_tests_use(client):
    response = client.get("/console")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    missing = [t for t in REQUIRED_TESTIDS if f'data-testid="{t}"' not in html]
    assert not missing, f"controls without their data-testid: {missing}"
    assert re.search(r'data-testid="connection-state" data-state="disconnected"', html)


def test_the_page_is_locked_to_its_own_origin(client):
    response = client.get("/console", headers={"Host": "gw.example:8443"})
    csp = csp_directives(response)
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'", "ws://gw.example:8443", "wss://gw.example:8443"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["ETag"]


def test_a_crafted_host_header_cannot_add_csp_directives(client):
    response = client.get("/console", headers={"Host": "evil.example; script-src *"})
    assert response.status_code == 200
    assert csp_directives(response)["connect-src"] == ["'self'"]
    assert "*" not in response.headers["Content-Security-Policy"]


def test_the_page_runs_no_inline_script_or_style(client):
    html = client.get("/console").get_data(as_text=True)
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert "<style" not in html and " style=" not in html


@pytest.mark.parametrize("path", sorted(ASSETS))
def test_the_assets_load_with_their_content_type(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype in ASSETS[path]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    assert client.get(path, headers={"If-None-Match": response.headers["ETag"]}).status_code == 304


def test_every_asset_the_page_names_is_served(client):
    html = client.get("/console").get_data(as_text=True)
    named = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert named
    for url in named:
        # Relative to /console, as the browser resolves them.
        assert client.get("/" + url).status_code == 200, url


@pytest.mark.parametrize(
    "path", sorted(p.name for p in STATIC.iterdir() if p.suffix in (".html", ".js", ".css", ".svg"))
)
def test_no_asset_reaches_another_host(path):
    text = (STATIC / path).read_text()
    external = set(_URL.findall(text)) - _NAMESPACES
    assert not external, f"{path} names other hosts (the console must work offline): {external}"
    assert "@import" not in text and "url(" not in text  # no fonts or images from anywhere


def test_the_script_never_parses_server_text_as_html():
    script = (STATIC / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"console.js uses {sink}"


def test_only_the_console_folder_is_served(client):
    assert client.get("/console/../app.py").status_code == 404
    assert client.get("/console/%2e%2e/app.py").status_code == 404
    assert client.get("/console/nope.js").status_code == 404


def test_a_trailing_slash_goes_back_to_the_page(client):
    response = client.get("/console/")
    assert response.status_code == 308
    assert response.headers["Location"] == "../console"


def test_the_config_says_whether_the_pages_origin_may_open_the_websocket(make_app):
    client = make_app(ALLOWED_CORS_ORIGIN="https://app.example").test_client()
    answer = client.get("/console/config.json?origin=https://app.example")
    assert answer.get_json() == {"origin": "https://app.example", "origin_allowed": True}
    assert answer.headers["Cache-Control"] == "no-store"
    refused = client.get("/console/config.json?origin=http://127.0.0.1:8000").get_json()
    assert refused["origin_allowed"] is False
    # ... and the same verdict at the door of /ws:
    assert client.get("/ws", headers={"Origin": "http://127.0.0.1:8000"}).status_code == 403


def test_every_origin_may_by_default(client):
    answer = client.get("/console/config.json?origin=http://localhost:8000").get_json()
    assert answer["origin_allowed"] is True


def test_the_config_wants_an_origin(client):
    response = client.get("/console/config.json?origin=javascript:alert(1)")
    assert response.status_code == 400
    assert "origin" in response.get_json()["error"]
