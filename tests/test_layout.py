"""Each package imports only what its docstring allows (gateway/*/__init__.py).

The layout is the architecture (docs/architecture.md): the brokers know nothing of Flask or
sockets, the transport nothing of accounts or HTTP views, and so on. A new import across
these lines fails here, so that the docstrings stay true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Package -> the gateway modules and third-party roots its modules may import.
ALLOWED = {
    "brokers": (
        {"gateway.brokers", "gateway.supervisor"},
        {"redis", "orjson"},
    ),
    "transport": (
        {
            "gateway.transport",
            "gateway.brokers",
            "gateway.protocol",
            "gateway.config",
            "gateway.supervisor",
            "gateway.guards",
            "gateway.metrics",
        },
        {"gevent", "wsproto", "orjson", "gunicorn"},
    ),
    "accounts": (
        # state and protocol: the `flask users` commands (the app's store, timestamps)
        {"gateway.accounts", "gateway.config", "gateway.http", "gateway.state", "gateway.protocol"},
        {
            "flask",
            "flask_jwt_extended",
            "jwt",
            "psycopg",
            "psycopg_pool",
            "gevent",
            "werkzeug",
            "click",
        },
    ),
    "guards": (
        {
            "gateway.guards",
            "gateway.config",
            "gateway.state",
            "gateway.brokers",
            "gateway.protocol",
            "gateway.http",
            "gateway.metrics",
        },
        {"flask", "flask_limiter", "limits", "flask_jwt_extended", "orjson", "redis", "werkzeug"},
    ),
    "http": (
        {
            "gateway.http",
            "gateway.jsondoc",
            "gateway.protocol",
            "gateway.state",
            "gateway.brokers",
            "gateway.guards.access",  # Forbidden -> 403
        },
        {"flask", "werkzeug", "orjson"},
    ),
    # The command-line client runs in a plain process: none of the server, no Flask, no gevent.
    "client": (
        {"gateway.client"},
        {"simple_websocket", "orjson", "platformdirs"},
    ),
}


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in `path` names (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "gateway":
                found |= {f"gateway.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


def allowed(name: str, gateway_modules: set[str], third_party: set[str]) -> bool:
    if name == "gateway" or name.startswith("gateway."):
        return any(name == m or name.startswith(m + ".") for m in gateway_modules)
    root = name.split(".")[0]
    return root in third_party or root in STDLIB


STDLIB = set(__import__("sys").stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_docstring_allows(package):
    gateway_modules, third_party = ALLOWED[package]
    folder = ROOT / "gateway" / package
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in folder.rglob("*.py")
        for name in imports_of(path)
        if not allowed(name, gateway_modules, third_party)
    }
    assert not wrong, "imports across the layout:\n" + "\n".join(sorted(wrong))


def test_every_package_says_what_it_owns_and_may_import():
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / "gateway" / package / "__init__.py").read_text()))
        assert doc and "import" in doc, f"gateway/{package}/__init__.py lacks its docstring"


def test_blueprints_do_not_import_each_other():
    for path in (ROOT / "blueprints").glob("*.py"):
        assert not any(n.startswith("blueprints") for n in imports_of(path)), path.name
