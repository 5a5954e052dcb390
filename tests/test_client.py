"""The `gw` client without a server: parsing, the token file, backoff, resume and publish logic.

The same client against a real gunicorn: tests/integration/test_live_cli.py.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest
from services import unavailable

from gateway.client import cli
from gateway.client.commands import Context
from gateway.client.errors import (
    AccessRevoked,
    AuthFailed,
    BadInput,
    Refused,
    TopicGone,
    Unreachable,
)
from gateway.client.publisher import LinePublisher, retry_delay
from gateway.client.stream import Backoff, Follower
from gateway.client.tokens import Login, TokenStore, server_key
from gateway.client.wsconn import ConnectionLost, websocket_url

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# The command line


def parse(*argv: str):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    return args, cli.context_of(args, parser)


def test_global_options_go_before_or_after_the_command(monkeypatch):
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    for argv in (
        ("--url", "http://gw.example:9000/", "--token", "T", "sub", "orders"),
        ("sub", "orders", "--url", "http://gw.example:9000", "--token", "T"),
    ):
        args, context = parse(*argv)
        assert (args.command, args.topic) == ("sub", "orders")
        assert (context.url, context.token, context.timeout) == ("http://gw.example:9000", "T", 10)
    _, context = parse("topics")
    assert (context.url, context.token) == (cli.DEFAULT_URL, None)


def test_the_environment_picks_the_gateway_and_the_token(monkeypatch):
    monkeypatch.setenv("GATEWAY_URL", "https://gw.example")
    monkeypatch.setenv("GATEWAY_TOKEN", "from-env")
    _, context = parse("topics")
    assert (context.url, context.token) == ("https://gw.example", "from-env")
    _, context = parse("topics", "--url", "http://other:1", "--token", "from-option")
    assert (context.url, context.token) == ("http://other:1", "from-option")


@pytest.mark.parametrize(
    "argv",
    [
        ("sub", "t", "--last-n", "3", "--since-seq", "4"),
        ("sub", "t", "--last-n", "-1"),
        ("sub", "t", "--max-delay", "0"),
        ("--url", "ftp://gw.example", "topics"),
        ("--url", "http://gw.example:port", "topics"),
        ("--url", "gw.example:8000", "topics"),
        ("create", "t", "--subscribe", "owner"),
        ("pub", "t"),
        ("frobnicate",),
        (),
    ],
)
def test_a_bad_command_line_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    assert exited.value.code == 2
    assert "usage: gw" in capsys.readouterr().err


def test_a_bad_gateway_url_in_the_environment_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("GATEWAY_URL", "127.0.0.1:8000")
    with pytest.raises(SystemExit) as exited:
        cli.main(["topics"])
    assert exited.value.code == 2 and "GATEWAY_URL" in capsys.readouterr().err


def test_without_a_token_a_command_says_how_to_log_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    assert cli.main(["--url", "http://127.0.0.1:1", "topics"]) == 4
    assert "not logged in to http://127.0.0.1:1: run `gw login USERNAME`" in (
        capsys.readouterr().err
    )


def test_the_token_option_wins_over_the_kept_one(tmp_path):
    store = TokenStore(tmp_path / "gw" / "tokens.json")
    store.put("http://gw:1", Login("alice", "kept"))
    assert Context("http://gw:1", store=store).bearer() == "kept"
    assert Context("http://gw:1", token="given", store=store).bearer() == "given"
    with pytest.raises(AuthFailed):
        Context("http://gw:2", store=store).bearer()


def test_websocket_url_of_a_gateway():
    assert websocket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert websocket_url("https://gw.example/prefix/") == "wss://gw.example/prefix/ws"


# ---------------------------------------------------------------------------------------------
# The token file


def test_the_token_file_is_private_whatever_the_umask(tmp_path):
    path = tmp_path / "config" / "gw" / "tokens.json"
    store = TokenStore(path)
    old = os.umask(0)
    try:
        store.put("http://gw:1", Login("alice", "secret"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"]  # no temporary left


def test_tokens_are_kept_per_gateway_url(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    store.put("http://GW:1/", Login("alice", "a"))
    store.put("http://gw:2", Login("bob", "b"))
    assert store.get("http://gw:1") == Login("alice", "a")
    assert store.get("http://gw:2") == Login("bob", "b")
    assert server_key("HTTP://GW:1/") == "http://gw:1"
    assert store.remove("http://gw:1") and not store.remove("http://gw:1")
    assert store.get("http://gw:1") is None and store.get("http://gw:2") is not None
    assert store.remove("http://gw:2") and not store.path.exists()


def test_a_damaged_token_file_reads_as_empty_and_is_rewritten(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    store = TokenStore(path)
    assert store.get("http://gw:1") is None
    store.put("http://gw:1", Login("alice", "a"))
    assert store.get("http://gw:1") == Login("alice", "a")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CONFIG_HOME is Linux's")
def test_the_token_file_lives_in_the_user_config_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert TokenStore().path == tmp_path / "gw" / "tokens.json"


# ---------------------------------------------------------------------------------------------
# Backoff


def test_backoff_doubles_up_to_its_cap_and_resets():
    backoff = Backoff(base=0.5, cap=4.0, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_backoff_jitter_takes_off_at_most_half():
    low = Backoff(base=1.0, cap=8.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    real = Backoff(base=1.0, cap=8.0)
    for ceiling in (1, 2, 4, 8, 8, 8):
        assert ceiling / 2 <= real.next() <= ceiling
    many = Backoff(base=1.0, cap=30.0, rng=lambda: 1.0)
    assert [many.next() for _ in range(200)][-1] == 30.0  # no overflow after many attempts


# ---------------------------------------------------------------------------------------------
# sub: resume, duplicates and gaps, with scripted connections


class FakeConnection:
    """Answers the subscribe with `answer`, then yields `frames`, then drops."""

    def __init__(self, answer: dict, frames: list[dict] = ()) -> None:
        self.answer = answer
        self.frames = list(frames)
        self.sent: list[dict] = []

    def next_request_id(self, prefix: str = "r") -> str:
        return f"{prefix}1"

    def send(self, frame: dict) -> None:
        self.sent.append(frame)

    def reply(self, request_id: str, timeout: float) -> dict:
        return {**self.answer, "request_id": request_id}

    def recv(self, timeout: float) -> dict:
        if self.frames:
            return self.frames.pop(0)
        raise ConnectionLost(1006)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def ack(seq: int, epoch: str = "e1", **extra) -> dict:
    return {"type": "ack", "status": "ok", "seq": seq, "epoch": epoch, **extra}


def event(seq: int, topic: str = "t") -> dict:
    return {"type": "event", "topic": topic, "message": {"id": f"m{seq}", "seq": seq}}


def info(msg: str, **fields) -> dict:
    return {"type": "info", "topic": "t", "msg": msg, **fields}


def follow(connections: list, **options):
    """Run a Follower over scripted connections; return (printed seqs, stderr, sleeps, error)."""
    script = iter(connections)

    def connect():
        step = next(script)
        if isinstance(step, Exception):
            raise step
        return step

    out, err, sleeps = io.BytesIO(), io.StringIO(), []
    follower = Follower(connect, "t", out, err, sleep=sleeps.append, **options)
    with pytest.raises(Exception) as raised:
        follower.run()
    seqs = [orjson.loads(line)["seq"] for line in out.getvalue().splitlines()]
    return seqs, err.getvalue(), sleeps, raised.value


def test_a_reconnect_resumes_after_the_last_printed_seq_without_duplicates():
    first = FakeConnection(ack(2), [event(3), {"type": "info", "msg": "ping"}, event(4)])
    second = FakeConnection(
        ack(6, recovered=True),
        [event(4), event(5), event(6), info("dropped", count=2, from_seq=7, to_seq=8), event(9)]
        + [event(11), event(12, topic="other"), info("topic_deleted")],
    )
    seqs, err, sleeps, error = follow([first, Unreachable("refused"), second])
    assert first.sent[0] == {"type": "subscribe", "topic": "t", "request_id": "sub1", "last_n": 0}
    assert second.sent[0]["since_seq"] == 4 and second.sent[0]["epoch"] == "e1"
    assert seqs == [3, 4, 5, 6, 9, 11]
    assert isinstance(error, TopicGone) and error.exit_code == 6
    assert "disconnected (1006" in err and "refused; reconnecting" in err
    assert "resumed 't' after seq 4; nothing lost" in err
    assert "lost 2 message(s) of 't' (seq 7-8): this client read too slowly" in err
    assert "lost 1 message(s) of 't' (seq 10-10)" in err
    assert len(sleeps) == 2


def test_a_new_epoch_or_a_lost_history_is_reported_and_followed():
    seqs, err, _, error = follow(
        [
            FakeConnection(ack(5), [event(6)]),
            FakeConnection(ack(2, "e2", recovered=False), [event(1), event(2)]),
            FakeConnection(ack(30, "e2", recovered=False), [event(25)]),
            FakeConnection({"type": "error", "error": {"code": "FORBIDDEN", "message": "no"}}),
        ]
    )
    assert seqs == [6, 1, 2, 25]
    assert "a new epoch" in err and "after seq 6 of the old stream may be lost" in err
    assert "no longer holds every message after seq 2 (recovered: false)" in err
    assert "lost 22 message" not in err  # said once, by the resume, not again by the gap
    assert isinstance(error, AccessRevoked) and error.exit_code == 7


def test_the_first_subscription_starts_where_asked_and_is_not_retried():
    opening = FakeConnection(ack(10), [event(8), event(9), event(10), info("access_revoked")])
    seqs, err, _, error = follow([opening], last_n=3)
    assert opening.sent[0]["last_n"] == 3 and seqs == [8, 9, 10]
    assert isinstance(error, AccessRevoked) and err == ""

    resume = FakeConnection(ack(10, recovered=False), [event(9), event(10), info("topic_deleted")])
    seqs, err, _, _ = follow([resume], since_seq=4)
    assert resume.sent[0]["since_seq"] == 4 and "epoch" not in resume.sent[0]
    assert seqs == [9, 10] and "after seq 4 (recovered: false)" in err

    missing = {"type": "error", "error": {"code": "TOPIC_NOT_FOUND", "message": "no such"}}
    *_, error = follow([FakeConnection(missing)])
    assert isinstance(error, Refused) and error.exit_code == 1
    *_, error = follow([Unreachable("cannot reach the gateway")])
    assert isinstance(error, Unreachable) and error.exit_code == 3
    *_, error = follow([FakeConnection(ack(1), [])])  # dropped before anything: retried
    assert isinstance(error, StopIteration)


def test_quick_drops_back_off_further_and_a_lasting_connection_starts_again():
    times = iter([0, 1, 2, 3, 4, 100, 200])  # subscribed at, dropped at: per connection
    connections = [FakeConnection(ack(1)) for _ in range(3)]
    connections.append(FakeConnection(ack(1), [info("topic_deleted")]))
    *_, sleeps, error = follow(
        connections, backoff=Backoff(base=0.5, cap=30, rng=lambda: 1.0), clock=lambda: next(times)
    )
    assert sleeps == [0.5, 1.0, 0.5] and isinstance(error, TopicGone)


def test_a_topic_missing_after_a_reconnect_ends_with_exit_6():
    missing = {"type": "error", "error": {"code": "TOPIC_NOT_FOUND", "message": "no such"}}
    _, _, _, error = follow([FakeConnection(ack(1)), FakeConnection(missing)])
    assert isinstance(error, TopicGone) and "no longer exists" in str(error)


# ---------------------------------------------------------------------------------------------
# pub -: stop-and-wait publishing


class PublishConnection:
    """Acks publishes with increasing seqs; refuses the ones listed in `refusals` first."""

    def __init__(self, refusals: dict[str, list[dict]] | None = None) -> None:
        self.refusals = refusals or {}
        self.sent: list[dict] = []
        self.seq = 0

    def send(self, frame: dict) -> None:
        self.sent.append(frame)

    def reply(self, request_id: str, timeout: float) -> dict:
        pending = self.refusals.get(request_id)
        if pending:
            return {"type": "error", "request_id": request_id, "error": pending.pop(0)}
        self.seq += 1
        return {"type": "ack", "request_id": request_id, "seq": self.seq}


def test_pub_lines_in_order_skipping_blank_ones():
    connection, out = PublishConnection(), io.BytesIO()
    count = LinePublisher(connection, "t", out, 5.0).run([b'{"a": 1}\n', b"\n", b"  \n", b"2"])
    assert count == 2
    assert [f["message"]["payload"] for f in connection.sent] == [{"a": 1}, 2]
    assert [f["request_id"] for f in connection.sent] == ["line-1", "line-4"]
    assert len({f["message"]["id"] for f in connection.sent}) == 2
    assert out.getvalue().count(b"\n") == 2


def test_pub_stops_at_an_invalid_line_and_says_which():
    connection = PublishConnection()
    with pytest.raises(BadInput) as raised:
        LinePublisher(connection, "t", io.BytesIO(), 5.0).run([b"1\n", b"2\n", b"{x\n", b"4\n"])
    assert "stdin line 3 is not valid JSON" in str(raised.value)
    assert "2 messages published before it" in str(raised.value)
    assert len(connection.sent) == 2 and raised.value.exit_code == 5


def test_pub_waits_out_a_rate_limit_and_keeps_the_order():
    limited = {"code": "RATE_LIMITED", "message": "publishing faster than 1/second; retry in 0.25s"}
    connection = PublishConnection({"line-2": [limited, limited]})
    waits: list[float] = []
    LinePublisher(connection, "t", io.BytesIO(), 5.0, sleep=waits.append).run([b"1", b"2", b"3"])
    assert [f["message"]["payload"] for f in connection.sent] == [1, 2, 2, 2, 3]
    assert waits == [0.25, 0.25]


def test_pub_stops_at_a_refused_line():
    forbidden = {"code": "FORBIDDEN", "message": "only the owner may publish"}
    connection = PublishConnection({"line-1": [forbidden]})
    with pytest.raises(Refused) as raised:
        LinePublisher(connection, "t", io.BytesIO(), 5.0).run([b"1", b"2"])
    assert "stdin line 1 was refused: only the owner may publish (FORBIDDEN)" in str(raised.value)
    assert len(connection.sent) == 1


def test_retry_delay_reads_the_wait_from_the_message():
    assert retry_delay("publishing faster than 100/second; retry in 0.01s") == 0.01
    assert retry_delay("rate limit exceeded; retry in 3 s") == 3.0
    assert retry_delay("slow down") == 1.0
    assert retry_delay("retry in 600s") == 5.0


# ---------------------------------------------------------------------------------------------
# Packaging and boundaries


def test_importing_the_client_loads_none_of_the_server():
    code = (
        "import sys, gateway.client.cli\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('flask', 'gevent', 'werkzeug')"
        " or m in ('gateway.app', 'gateway.protocol') or m.startswith('gateway.transport')]\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_gw_script_is_declared_and_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["gw"] == "gateway.client.cli:main"
    script = Path(sys.executable).parent / "gw"
    if not script.exists():
        script = shutil.which("gw")
        if script is None:
            unavailable("the gw script is not installed: run `make` (pip install -e .)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: gw" in done.stdout, done.stderr


class DroppingConnection(PublishConnection):
    """Drops when sending (`on_send`) or while waiting for the answer, with `code`."""

    def __init__(self, code: int | None, on_send: bool) -> None:
        super().__init__()
        self.code, self.on_send = code, on_send

    def send(self, frame: dict) -> None:
        if self.on_send:
            raise ConnectionLost(self.code)
        super().send(frame)

    def reply(self, request_id: str, timeout: float) -> dict:
        raise ConnectionLost(self.code)


@pytest.mark.parametrize(
    ("code", "on_send", "error", "says"),
    [
        (1001, True, Unreachable, "stdin line 1 was not sent"),
        (1006, False, Unreachable, "may or may not have been published"),
        (1009, False, Refused, "larger than the gateway accepts"),
    ],
)
def test_pub_says_what_became_of_the_line_in_flight(code, on_send, error, says):
    with pytest.raises(error) as raised:
        LinePublisher(DroppingConnection(code, on_send), "t", io.BytesIO(), 5.0).run([b"1"])
    assert says in str(raised.value) and "0 messages published before it" in str(raised.value)
