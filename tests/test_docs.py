"""The documentation stays true to the code and to itself.

Every setting the code reads is in docs/configuration.md's table and in .env.example; every
relative link in README.md and docs/*.md points to a file that exists (and to a heading of
it, when the link names one); the README stays short.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
READERS = ("gateway/config.py", "gunicorn.conf.py")
CONFIGURATION = ROOT / "docs" / "configuration.md"
README_MAX_LINES = 220

# [text](target) and [text]: target (an image's ![alt](target) links the same way).
_INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:...
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


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
    table = CONFIGURATION.read_text()
    example = (ROOT / ".env.example").read_text()
    assert f"| `{name}` |" in table, f"{name} is missing from docs/configuration.md's table"
    assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} is missing from .env.example"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def link_targets(text: str) -> list[str]:
    """Return the target of every link in a Markdown text, outside code."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)


def relative_links(text: str) -> list[str]:
    """Return the link targets that point into the repository or the same text (`#...`)."""
    return [target for target in link_targets(text) if not _SCHEME.match(target)]


def anchors(text: str) -> set[str]:
    """Return the anchors GitHub gives a Markdown text's headings."""
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in found:
            n += 1
            anchor = f"{slug}-{n}"
        found.add(anchor)
    return found


def test_links_are_found():
    assert "docs/protocol.md" in relative_links((ROOT / "README.md").read_text())
    links = "[a](x.md#y) [b](https://e.org) [c](#z) `[d](no.md)`\n```\n[e](no.md)\n```\n"
    assert relative_links(links) == ["x.md#y", "#z"]
    assert anchors("# A `b`, c\n## Quick start\n## Quick start\n") == {
        "a-b-c",
        "quick-start",
        "quick-start-1",
    }


def resolves(document: Path, target: str) -> bool:
    """Tell whether a link of `document` reaches an existing file, and heading if it names one."""
    path, _, heading = target.partition("#")
    linked = document.parent / unquote(path.split("?", 1)[0]) if path else document
    if not linked.exists():
        return False
    return not heading or linked.suffix != ".md" or heading in anchors(linked.read_text())


@pytest.mark.parametrize(
    "document", documents(), ids=lambda path: path.relative_to(ROOT).as_posix()
)
def test_every_relative_link_points_to_a_file_and_heading(document):
    text = document.read_text()
    missing = [target for target in relative_links(text) if not resolves(document, target)]
    assert not missing, (
        f"{document.relative_to(ROOT)} links to missing files or headings: {missing}"
    )


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail to docs/"
    )
