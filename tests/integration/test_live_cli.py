"""The `gw` command-line client against a real gunicorn (docs/cli.md).

Every command runs as a subprocess (`python -m gateway.client`) with its own HOME and
XDG_CONFIG_HOME, so the token file is the test's. A `gw sub` whose reconnect must happen at a
chosen moment is frozen with SIGSTOP while the gateway restarts and whatever should be
missed is published, then thawed: its dropped connection is then found only after the
restart, which makes resume (or its failure) deterministic.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
from cluster import RedisServer
from harness import (
    PASSWORD,
    REPO_ROOT,
    create_topic,
    free_port,
    http,
    stats_topic,
    unique,
    wait_until,
)

CLI = [sys.executable, "-m", "gateway.client"]


@pytest.fixture
def home(tmp_path) -> Path:
    """A HOME of the test's own; the token file lands in its .config/gw."""
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def cli_env(home: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), GATEWAY_URL=url)
    return env


def gw_run(home: Path, url: str, *args: str, stdin: str = "", timeout: float = 30):
    """Run one `gw` command to its end; return the CompletedProcess (text)."""
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO_ROOT,
        env=cli_env(home, url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list:
    return [orjson.loads(line) for line in text.splitlines()]


def _default_sigint() -> None:
    # A test run started in the background inherits an ignored SIGINT; `gw` needs the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Sub:
    """A running `gw sub`: its stdout lines parsed as JSON, its stderr lines kept."""

    def __init__(self, home: Path, url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "sub", *args],
            cwd=REPO_ROOT,
            env=cli_env(home, url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.errors.append(line.decode())

    def events(self, count: int, timeout: float = 20) -> list[dict]:
        """The next `count` messages printed (each one line of JSON)."""
        found = []
        for _ in range(count):
            try:
                found.append(orjson.loads(self.lines.get(timeout=timeout)))
            except queue.Empty:
                raise AssertionError(f"only {found} printed; stderr: {self.errors}") from None
        return found

    def nothing_more(self) -> bool:
        return self.lines.empty()

    def said(self, text: str, timeout: float = 20) -> str:
        """Wait until a stderr line contains `text`; return it."""
        return wait_until(
            lambda: next((line for line in self.errors if text in line), None),
            timeout,
            what=f"{text!r} on stderr (so far: {self.errors})",
        )

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def subs():
    """Start `gw sub` processes: subs(home, url, *args); all are ended after the test."""
    started: list[Sub] = []

    def start(home: Path, url: str, *args: str) -> Sub:
        started.append(Sub(home, url, *args))
        return started[-1]

    yield start
    for sub in started:
        sub.close()


def login(home: Path, srv) -> str:
    """Register a user through `gw` (which keeps its token); return the token."""
    username = unique("u")
    done = gw_run(home, srv.url, "register", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    return http("POST", srv.url + "/users/login", {"username": username, "password": PASSWORD})[1][
        "token"
    ]


def subscribed(srv, topic: str, count: int = 1) -> None:
    wait_until(
        lambda: (stats_topic(srv, topic) or {}).get("subscribers") == count,
        10,
        what=f"{count} subscriber(s) of {topic}",
    )


# ---------------------------------------------------------------------------------------------
# Accounts and topics


def test_login_keeps_a_private_token_file_and_logout_forgets_it(gw, home):
    username = unique("u")
    done = gw_run(home, gw.url, "register", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and "registered" in done.stdout, done.stderr
    token_file = home / ".config" / "gw" / "tokens.json"
    token_file.unlink()  # login alone must write it
    done = gw_run(home, gw.url, "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and "logged in" in done.stdout, done.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    kept = orjson.loads(token_file.read_bytes())["servers"][gw.url]
    assert kept["username"] == username
    assert http("GET", gw.url + "/users/profile", token=kept["token"])[0] == 200
    assert gw_run(home, gw.url, "topics").returncode == 0

    # Keyed by URL: the same gateway under another name is another entry, kept apart.
    other = gw.url.replace("127.0.0.1", "localhost")
    done = gw_run(home, other, "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert set(orjson.loads(token_file.read_bytes())["servers"]) == {gw.url, other}
    done = gw_run(home, gw.url, "logout")
    assert done.returncode == 0 and "logged out" in done.stdout
    assert set(orjson.loads(token_file.read_bytes())["servers"]) == {other}
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert gw_run(home, other, "logout").returncode == 0
    assert not token_file.exists()
    done = gw_run(home, gw.url, "topics")
    assert done.returncode == 4 and "not logged in" in done.stderr, done

    wrong = "not-the-password\n"
    done = gw_run(home, gw.url, "login", username, "--password-stdin", stdin=wrong)
    assert done.returncode == 4 and done.stderr.startswith("gw: "), done
    assert not token_file.exists()


def test_topics_create_and_delete(gw, home):
    login(home, gw)
    topic = unique("cli")
    done = gw_run(home, gw.url, "create", topic, "--publish", "owner", "--subscribe", "members")
    assert done.returncode == 0 and topic in done.stdout, done.stderr

    listed = json_lines(gw_run(home, gw.url, "topics", "--json").stdout)[0]
    mine = [t for t in listed if t["name"] == topic]
    assert len(mine) == 1 and (mine[0]["publish"], mine[0]["subscribe"]) == ("owner", "members")
    table = gw_run(home, gw.url, "topics").stdout.splitlines()
    assert table[0].split() == ["NAME", "OWNER", "PUBLISH", "SUBSCRIBE", "SUBSCRIBERS"]
    assert any(line.split()[:1] == [topic] for line in table[1:]), table

    again = gw_run(home, gw.url, "create", topic)
    assert again.returncode == 1 and "already exists" in again.stderr and "409" in again.stderr

    assert gw_run(home, gw.url, "delete", topic).returncode == 0
    gone = gw_run(home, gw.url, "delete", topic)
    assert gone.returncode == 1 and "404" in gone.stderr, gone
    bad = gw_run(home, gw.url, "create", unique("cli"), "--publish", "nobody")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# ---------------------------------------------------------------------------------------------
# pub and sub


def test_sub_prints_what_pub_sends_in_order(gw, home, subs):
    login(home, gw)
    topic = unique("cli")
    assert gw_run(home, gw.url, "create", topic).returncode == 0
    sub = subs(home, gw.url, topic)
    subscribed(gw, topic)

    one = gw_run(home, gw.url, "pub", topic, '{"n": 0}', "--id", "first")
    assert one.returncode == 0, one.stderr
    assert json_lines(one.stdout)[0]["seq"] == 1 and json_lines(one.stdout)[0]["id"] == "first"
    lines = "\n".join(orjson.dumps({"n": n}).decode() for n in range(1, 40)) + "\n\n"
    many = gw_run(home, gw.url, "pub", topic, "-", stdin=lines)
    assert many.returncode == 0, many.stderr
    assert [r["seq"] for r in json_lines(many.stdout)] == list(range(2, 41))

    printed = sub.events(40)
    assert [m["payload"] for m in printed] == [{"n": n} for n in range(40)]
    assert [m["seq"] for m in printed] == list(range(1, 41))
    assert printed[0]["id"] == "first" and all(m["topic"] == topic for m in printed)

    # A second subscriber replays the history it asks for.
    late = subs(home, gw.url, topic, "--last-n", "3")
    assert [m["seq"] for m in late.events(3)] == [38, 39, 40]

    sub.proc.send_signal(signal.SIGINT)  # Ctrl-C: exit 0, nothing said
    assert sub.wait() == 0 and sub.errors == []


def test_pub_stops_at_the_first_line_that_is_not_json(gw, home):
    token = login(home, gw)
    topic = unique("cli")
    assert gw_run(home, gw.url, "create", topic).returncode == 0
    done = gw_run(home, gw.url, "pub", topic, "-", stdin='1\n"two"\n{oops\n4\n')
    assert done.returncode == 5, done
    assert "line 3 is not valid JSON" in done.stderr and "2 messages published" in done.stderr
    assert len(json_lines(done.stdout)) == 2
    history = http("GET", f"{gw.url}/topics/{topic}/messages", token=token)[1]
    assert [m["payload"] for m in history["messages"]] == [1, "two"]

    done = gw_run(home, gw.url, "pub", topic, "{oops")
    assert done.returncode == 5 and "not valid JSON" in done.stderr and done.stdout == ""


def test_sub_ends_when_the_topic_is_deleted(gw, home, subs):
    login(home, gw)
    topic = unique("cli")
    assert gw_run(home, gw.url, "create", topic).returncode == 0
    sub = subs(home, gw.url, topic)
    subscribed(gw, topic)
    assert gw_run(home, gw.url, "delete", topic).returncode == 0
    assert sub.wait() == 6
    assert sub.said("was deleted")


def test_bad_url_and_bad_token_say_so_with_their_exit_codes(gw, home):
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in (("topics",), ("sub", "t"), ("pub", "t", "-"), ("pub", "t", "1")):
        done = gw_run(home, nowhere, "--token", "anything", *args)
        assert done.returncode == 3, (args, done)
        assert "cannot reach the gateway" in done.stderr and "connection refused" in done.stderr

    for args in (("topics",), ("sub", "t"), ("pub", "t", "-"), ("create", "t")):
        done = gw_run(home, gw.url, "--token", "not.a.token", *args)
        assert done.returncode == 4, (args, done)
        assert "rejected the token" in done.stderr, done.stderr

    done = gw_run(home, "ftp://example", "topics")
    assert done.returncode == 2 and "GATEWAY_URL" in done.stderr


# ---------------------------------------------------------------------------------------------
# Reconnecting


@pytest.fixture
def redis_url(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    redis_server = RedisServer(folder)
    redis_server.start()
    yield redis_server.url
    redis_server.stop()


RESTART_ENV = {"HEARTBEAT_INTERVAL": 0, "SHUTDOWN_GRACE_SECONDS": 2}


def restart_while_frozen(srv, sub: Sub, after=lambda: None) -> None:
    """Freeze `sub`, restart `srv`, run `after`, thaw `sub`: it reconnects only then."""
    os.kill(sub.proc.pid, signal.SIGSTOP)
    try:
        assert srv.stop() == 0, srv.log_tail()
        srv.start()
        after()
    finally:
        os.kill(sub.proc.pid, signal.SIGCONT)


def test_sub_resumes_from_redis_after_a_restart_with_nothing_lost(
    server_factory, redis_url, home, subs
):
    srv = server_factory(env={**RESTART_ENV, "BROKER_URL": redis_url})
    token = login(home, srv)
    topic = create_topic(srv, token)
    sub = subs(home, srv.url, topic, "--max-delay", "1")
    subscribed(srv, topic)
    assert gw_run(home, srv.url, "pub", topic, "-", stdin="1\n2\n").returncode == 0
    assert [m["payload"] for m in sub.events(2)] == [1, 2]

    def publish_missed():
        assert gw_run(home, srv.url, "pub", topic, "-", stdin="3\n4\n5\n").returncode == 0

    restart_while_frozen(srv, sub, after=publish_missed)
    sub.said("resumed")
    assert [(m["seq"], m["payload"]) for m in sub.events(3)] == [(3, 3), (4, 4), (5, 5)]
    assert not [line for line in sub.errors if "lost" in line and "nothing lost" not in line]
    assert gw_run(home, srv.url, "pub", topic, "6").returncode == 0
    assert [m["seq"] for m in sub.events(1)] == [6]
    assert sub.nothing_more()


def test_sub_keeps_retrying_while_the_gateway_is_down(server_factory, redis_url, home, subs):
    srv = server_factory(env={**RESTART_ENV, "BROKER_URL": redis_url})
    token = login(home, srv)
    topic = create_topic(srv, token)
    sub = subs(home, srv.url, topic, "--max-delay", "1")
    subscribed(srv, topic)
    assert srv.stop() == 0
    sub.said("cannot reach the gateway")  # a failed attempt, and it keeps going
    srv.start()
    sub.said("resumed")
    assert gw_run(home, srv.url, "pub", topic, '"back"').returncode == 0
    assert [m["payload"] for m in sub.events(1)] == ["back"]
    assert sub.proc.poll() is None


def test_sub_says_what_a_small_redis_ring_could_not_replay(server_factory, redis_url, home, subs):
    srv = server_factory(env={**RESTART_ENV, "BROKER_URL": redis_url, "RING_BUFFER_SIZE": 5})
    token = login(home, srv)
    topic = create_topic(srv, token)
    sub = subs(home, srv.url, topic, "--max-delay", "1")
    subscribed(srv, topic)
    assert gw_run(home, srv.url, "pub", topic, "0").returncode == 0
    assert [m["seq"] for m in sub.events(1)] == [1]

    def publish_too_many():
        lines = "".join(f"{n}\n" for n in range(1, 11))
        assert gw_run(home, srv.url, "pub", topic, "-", stdin=lines).returncode == 0

    restart_while_frozen(srv, sub, after=publish_too_many)
    assert "recovered: false" in sub.said("lost messages")
    assert [m["seq"] for m in sub.events(5)] == [7, 8, 9, 10, 11]


def test_a_restarted_memory_gateway_is_a_new_stream_or_a_lost_topic(server_factory, home, subs):
    srv = server_factory(env=RESTART_ENV)
    token = login(home, srv)
    topic = create_topic(srv, token)
    sub = subs(home, srv.url, topic, "--max-delay", "1")
    subscribed(srv, topic)
    assert gw_run(home, srv.url, "pub", topic, '"old"').returncode == 0
    assert [m["payload"] for m in sub.events(1)] == ["old"]

    def recreate_and_publish():  # the memory broker lost the topic and its history
        create_topic(srv, token, topic)
        assert gw_run(home, srv.url, "pub", topic, '"new"').returncode == 0

    restart_while_frozen(srv, sub, after=recreate_and_publish)
    assert "may be lost" in sub.said("a new epoch")
    assert [(m["seq"], m["payload"]) for m in sub.events(1)] == [(1, "new")]

    restart_while_frozen(srv, sub)  # nobody creates the topic again this time
    assert sub.wait() == 6
    assert sub.said("no longer exists")
