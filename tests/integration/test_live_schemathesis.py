"""A live gunicorn answers as its own /openapi.json says (docs/rest-api.md "OpenAPI document").

Schemathesis reads the document the running server serves and generates requests from it,
in all four of its phases:

- examples and coverage: every documented bound and enum value, missing and wrongly typed
  fields, undocumented methods, a missing or forged token;
- fuzzing: random valid and invalid requests to each operation; path parameters draw half
  the time from a topic and a user that exist, so success answers are reached, not only
  the 404s of random names;
- stateful: sequences that follow the document's OpenAPI links (create a topic, then publish
  to it, read its history, follow its events, add a member, delete it) and the links
  schemathesis infers from the answers' shapes.

Every response goes through all of schemathesis's checks: no 5xx, a documented status,
content type, headers and body (with no undocumented field: see `closed`), invalid data
refused with a 4xx and valid data accepted, a missing or bad token refused with 401, an
undocumented method answered 405 with Allow, a deleted topic gone.

It runs schemathesis's command line, the interface schemathesis keeps stable: its pytest
integration (`schemathesis.pytest.from_fixture`, needed for a schema that only exists once a
fixture started the server) does not run under this pytest. This file is also the hooks file
of that run (SCHEMATHESIS_HOOKS): see `filter_failure`. Deterministic generation, one worker,
no cache, a fresh server: a failure reproduces on the next run, and is a bug of the gateway
or of the document. Bounded: about 20 s on 2 cores.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from harness import Server, create_topic, http, register

# Fixed names: each run has its own server and database, so a run replays the last one.
OWNER, MEMBER, TOPIC = "alice", "bob", "orders"
EXAMPLES = 50  # fuzzed cases per operation; the coverage phase adds its own
# The stream never ends by itself: its first event (subscribed) is enough. A plain HTTP client
# cannot upgrade: the handshake headers are a WebSocket library's, not parameters of the
# document, so valid data gets a 400 from /ws and "valid data is accepted" cannot hold there.
CONFIG = """
max-stream-events = 1
request-timeout = 10
cache.enabled = false

[dictionaries]
topics = {{ values = ["{topic}"] }}
users = {{ values = ["{member}"] }}

[parameters]
"path.name" = {{ dictionary = "topics", probability = 0.5 }}
"path.username" = {{ dictionary = "users", probability = 0.5 }}

[[operations]]
include-path = "/ws"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One gunicorn (memory broker, limits off) with an owner, a member and a topic."""
    server = Server(tmp_path_factory.mktemp("schemathesis"))
    try:
        server.start()
        token = register(server, OWNER)
        register(server, MEMBER)
        create_topic(server, token, TOPIC)
        yield server, token
    finally:
        server.close()


@pytest.mark.timeout(240)
def test_every_answer_is_as_the_document_says(gateway, tmp_path):
    server, token = gateway
    status, document = http("GET", server.url + "/openapi.json")
    assert status == 200, document
    served = tmp_path / "openapi.json"
    served.write_text(json.dumps(closed(document)))
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(topic=TOPIC, member=MEMBER))
    run = schemathesis_run(served, config, server.url, token, tmp_path)
    assert run.returncode == 0, f"{run.stdout[-30000:]}\n{run.stderr[-5000:]}\n{server.log_tail()}"


def schemathesis_run(
    document: Path, config: Path, url: str, token: str, workdir: Path
) -> subprocess.CompletedProcess:
    """Run `schemathesis run` on the document against the server; return what it said."""
    here = Path(__file__).resolve()
    env = os.environ | {
        "SCHEMATHESIS_HOOKS": str(here),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(here.parent), os.environ.get("PYTHONPATH")])
        ),
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        str(document),
        "--url",
        url,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--suppress-health-check",
        "all",
    ]
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=200, check=False
    )


def closed(document: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the document whose answers allow no property they do not name.

    The served document leaves objects open, so that a client keeps working when an answer
    gains a field; here an answer with a field the document lacks fails instead. Request
    bodies stay open: the gateway ignores fields it does not know.
    """
    closed_copy = copy.deepcopy(document)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    requests = {
        content["schema"]["$ref"].rsplit("/", 1)[-1]
        for methods in document["paths"].values()
        for operation in methods.values()
        for content in operation.get("requestBody", {}).get("content", {}).values()
    }
    schemas = closed_copy["components"]["schemas"]
    close({name: schema for name, schema in schemas.items() if name not in requests})
    return closed_copy


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but those that only say JSON Schema cannot state a rule.

    - A password's length: JSON Schema counts characters, the gateway UTF-8 bytes (8-72).
      "ééééé" is 5 characters, too short for the document, but 10 bytes, enough for the
      gateway; 72 "é" fit the document but are 144 bytes.
    - The SSE route reads `since_seq` only without a Last-Event-ID (which wins over it), so
      a bad `since_seq` beside one is not refused.
    """
    accepted, rejected = "ST201", "ST202"  # invalid data accepted, valid data rejected
    path, body, headers = case.operation.path, case.body, case.headers or {}
    if (
        path == "/users/register"
        and failure.code in (accepted, rejected)
        and isinstance(body, dict)
    ):
        password = body.get("password")
        if isinstance(password, str):
            octets = len(password.encode("utf-8", "surrogatepass"))
            return (8 <= len(password) <= 72) == (8 <= octets <= 72)
    if path == "/topics/{name}/events" and failure.code == accepted:
        return "Last-Event-ID" not in headers
    return True
