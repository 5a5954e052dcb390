"""JSON documents from clients: parsed with a bound on nesting depth (docs/configuration.md "Limits").

Every WebSocket frame and REST body goes through `loads`. orjson itself refuses more than
1024 levels, but it cannot encode more than 254, and a payload stored deeper than that
would fail when it is sent on (the Redis listener, history pages). MAX_JSON_DEPTH (32 by
default) keeps every accepted document far inside what every part of the gateway handles.

Depth counts containers: `1` and `"a"` have depth 0, `[]` and `{}` depth 1, `{"a": [1]}`
depth 2. A WebSocket `publish` frame is itself two levels around its payload.
"""

from __future__ import annotations

from typing import Any

import orjson


class JsonError(ValueError):
    """Client text that is not JSON, or JSON nested deeper than allowed."""


def loads(data: str | bytes, max_depth: int) -> Any:
    """Parse `data`, raising JsonError when it is not JSON or is deeper than `max_depth`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JsonError(f"invalid JSON: {exc}") from None
    check_depth(value, max_depth, data)
    return value


def check_depth(value: Any, max_depth: int, text: str | bytes) -> None:
    """Raise JsonError if `value` (parsed from `text`) nests deeper than `max_depth`."""
    if depth_exceeds(value, max_depth, text):
        raise JsonError(f"JSON is nested deeper than {max_depth} levels")


def depth_exceeds(value: Any, limit: int, text: str | bytes | None = None) -> bool:
    """Tell whether `value` nests containers more than `limit` deep (no recursion).

    With the `text` it was parsed from, a document with no more brackets than `limit`
    (every frame of ordinary size) is cleared by two counts in C instead of a walk.
    """
    if type(value) not in (dict, list):
        return False
    if text is not None:
        square, curly = ("[", "{") if isinstance(text, str) else (b"[", b"{")
        if text.count(square) + text.count(curly) <= limit:
            return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) in (dict, list):
                stack.append((child, depth + 1))
    return False
