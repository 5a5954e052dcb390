"""MAX_MESSAGE_BYTES on WebSocket messages (bytes, after reassembly) and REST bodies (docs/configuration.md, docs/protocol.md)."""

from __future__ import annotations

import json

import pytest
from harness import Server, check_event, create_topic, http_full, register, ws_connect

LIMIT = 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("oversize"), env={"MAX_MESSAGE_BYTES": LIMIT})
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def small_token(small):
    return register(small)


def publish_text(topic: str, size: int, char: str = "x") -> str:
    """A publish frame whose UTF-8 encoding is exactly size bytes, padded with char."""
    frame = {
        "type": "publish",
        "topic": topic,
        "request_id": "big",
        "message": {"id": "m", "payload": ""},
    }
    room = size - len(json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode())
    count, rest = divmod(room, len(char.encode()))
    frame["message"]["payload"] = char * count + "x" * rest
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    assert len(text.encode()) == size
    return text


def split3(text: str) -> list[str]:
    third = len(text) // 3
    return [text[:third], text[third : 2 * third], text[2 * third :]]


@pytest.mark.parametrize("char", ["x", "é", "€"], ids=["ascii", "2-byte", "3-byte"])
@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
def test_message_of_exactly_the_limit_is_accepted(small, small_token, char, fragmented):
    topic = create_topic(small, small_token)
    text = publish_text(topic, LIMIT, char)
    with ws_connect(small, small_token) as sub, ws_connect(small, small_token) as pub:
        sub.subscribe(topic)
        pub.send(split3(text) if fragmented else text)
        ack = pub.recv()
        assert ack["type"] == "ack" and ack["request_id"] == "big" and ack["seq"] == 1, ack
        msg = check_event(sub.recv(), topic, seq=1)
        assert msg["payload"] == json.loads(text)["message"]["payload"]


@pytest.mark.parametrize("char", ["x", "é", "€"], ids=["ascii", "2-byte", "3-byte"])
@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
def test_one_byte_over_the_limit_closes_1009(small, small_token, char, fragmented):
    topic = create_topic(small, small_token)
    text = publish_text(topic, LIMIT + 1, char)
    with ws_connect(small, small_token) as ws:
        ws.send(split3(text) if fragmented else text)
        frames, code = ws.until_closed(timeout=5)
        assert code == 1009, f"close code {code}, frames {frames}"
        assert not [f for f in frames if f["type"] == "ack"], frames


def test_multibyte_message_under_the_limit_in_characters_but_over_in_bytes_closes_1009(
    small, small_token
):
    topic = create_topic(small, small_token)
    text = publish_text(topic, int(LIMIT * 1.5), "é")
    assert len(text) < LIMIT < len(text.encode())
    with ws_connect(small, small_token) as ws:
        ws.send(text)
        frames, code = ws.until_closed(timeout=5)
        assert code == 1009, f"close code {code}: the limit must count bytes, not characters"


def test_rest_body_over_the_limit_is_rejected_with_json_error(small, small_token):
    body = json.dumps({"name": "fine-name", "pad": "y" * LIMIT}).encode()
    resp = http_full(
        "POST",
        small.url + "/topics",
        raw=body,
        token=small_token,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status in (400, 413), (resp.status, resp.body[:200])
    assert isinstance(resp.json, dict) and isinstance(resp.json.get("error"), str), resp.body[:200]
