"""HTTP calls to the gateway's REST API (docs/rest-api.md), answers turned into exit codes.

The standard library's http.client, not urllib.request: no proxy taken from the environment
(the WebSocket ignores proxies too, so both reach the same server), and error answers are
plain return values rather than exceptions to unpack.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from gateway.client.errors import AuthFailed, Refused, Unreachable

_NO_BODY = object()


def topic_path(topic: str, *rest: str) -> str:
    """Return `/topics/<topic>[/rest...]` with the name percent-encoded."""
    return "/".join(["/topics", quote(topic, safe=""), *rest])


def describe_failure(exc: BaseException, timeout: float) -> str:
    """Say in a few words why a connection attempt failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the gateway running there?)"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return str(exc) or type(exc).__name__


class Api:
    """The REST API of one gateway, with or without a token."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str) -> Any:
        """GET `path` and return the parsed answer."""
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        """POST `body` as JSON to `path` and return the parsed answer."""
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        """DELETE `path` and return the parsed answer."""
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: Any = _NO_BODY) -> Any:
        """Send one request; return the JSON of a 2xx answer, raise a CliError for the rest."""
        status, answer = self._exchange(method, path, body)
        if 200 <= status < 300:
            return answer
        error, code = _error_of(answer, status)
        if status == 401 and self.token is not None:
            raise AuthFailed(
                f"the gateway at {self.base_url} rejected the token ({error}): "
                "log in again with `gw login USERNAME`"
            )
        if status == 401:
            raise AuthFailed(error)
        if status >= 500:
            raise Unreachable(f"the gateway at {self.base_url} is unavailable: {error} ({status})")
        raise Refused(f"{error} ({status}{' ' + code if code else ''})")

    def _exchange(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = urlsplit(self.base_url)
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.hostname, parts.port, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not _NO_BODY:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request(method, parts.path + path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = describe_failure(exc, self.timeout)
            raise Unreachable(f"cannot reach the gateway at {self.base_url}: {reason}") from None
        finally:
            connection.close()
        try:
            return response.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return response.status, None


def _error_of(answer: Any, status: int) -> tuple[str, str | None]:
    """Return the message and code of an error answer (docs/rest-api.md#conventions)."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        code = answer.get("code")
        return answer["error"], code if isinstance(code, str) else None
    return f"HTTP {status}", None
