"""Every setting the code reads is documented in the README's table and in .env.example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READERS = ("gateway/config.py", "gunicorn.conf.py")


def variables_read() -> set[str]:
    names: set[str] = set()
    for path in READERS:
        text = (ROOT / path).read_text()
        names |= set(re.findall(r"""env(?:iron)?\.get\(\s*"([A-Z][A-Z0-9_]+)\"""", text))
        names |= set(re.findall(r"""_(?:int|rate|list)\(env, "([A-Z][A-Z0-9_]+)\"""", text))
    return names - {"GUNICORN_CMD_ARGS"}


def test_the_readers_are_found():
    assert {"JWT_SECRET_KEY", "PORT", "HOST", "MAX_JSON_DEPTH", "WEB_CONCURRENCY"} <= (
        variables_read()
    )


@pytest.mark.parametrize("name", sorted(variables_read()))
def test_every_variable_is_documented(name):
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert f"| `{name}` |" in readme, f"{name} is missing from the README's configuration table"
    assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} is missing from .env.example"
