"""What each `gw` subcommand does, given its parsed arguments and a Context (docs/cli.md)."""

from __future__ import annotations

import argparse
import getpass
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import orjson

from gateway.client.api import Api, topic_path
from gateway.client.errors import AuthFailed, BadInput
from gateway.client.publisher import LinePublisher
from gateway.client.stream import Backoff, Follower
from gateway.client.tokens import Login, TokenStore
from gateway.client.wsconn import Connection


@dataclass
class Context:
    """The gateway a command talks to, the token override, and the streams it uses."""

    url: str
    token: str | None = None  # --token or GATEWAY_TOKEN; else the token kept at login
    timeout: float = 10.0
    store: TokenStore = field(default_factory=TokenStore)
    stdin: BinaryIO = field(default_factory=lambda: sys.stdin.buffer)
    stdout: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def api(self, *, auth: bool = True) -> Api:
        """Return the REST API, with the token when `auth`."""
        return Api(self.url, self.bearer() if auth else None, self.timeout)

    def bearer(self) -> str:
        """Return the token to send, or raise AuthFailed saying how to get one."""
        if self.token:
            return self.token
        login = self.store.get(self.url)
        if login is None:
            raise AuthFailed(
                f"not logged in to {self.url}: run `gw login USERNAME` "
                "(or pass --token, or set GATEWAY_TOKEN)"
            )
        return login.token

    def say(self, text: str) -> None:
        """Print a line for the person at the terminal (stdout: it is the command's result)."""
        self.stdout.write(text.encode() + b"\n")
        self.stdout.flush()

    def emit(self, document: object) -> None:
        """Print one JSON document on one line."""
        self.stdout.write(orjson.dumps(document) + b"\n")
        self.stdout.flush()


def read_password(context: Context, from_stdin: bool, confirm: bool = False) -> str:
    """Return the password: the first stdin line, or typed at the terminal without echo."""
    if from_stdin:
        try:
            password = context.stdin.readline().decode().rstrip("\r\n")
        except UnicodeDecodeError:
            raise BadInput("the password on standard input is not UTF-8") from None
    else:
        try:
            password = getpass.getpass("Password: ")
            if confirm and getpass.getpass("Password again: ") != password:
                raise BadInput("the two passwords differ")
        except EOFError:
            raise BadInput("no password given (use --password-stdin to pipe one in)") from None
    if not password:
        raise BadInput("no password given")
    return password


def register(args: argparse.Namespace, context: Context) -> None:
    """Create an account; its token is kept as by login."""
    password = read_password(context, args.password_stdin, confirm=True)
    body = {"username": args.username, "password": password}
    if args.email:
        body["email"] = args.email
    answer = context.api(auth=False).post("/users/register", body)
    context.store.put(context.url, Login(args.username, answer["token"]))
    context.say(f"registered {args.username} on {context.url}, and logged in")


def login(args: argparse.Namespace, context: Context) -> None:
    """Log in and keep the token for this gateway."""
    password = read_password(context, args.password_stdin)
    body = {"username": args.username, "password": password}
    answer = context.api(auth=False).post("/users/login", body)
    context.store.put(context.url, Login(args.username, answer["token"]))
    context.say(f"logged in to {context.url} as {args.username}")


def logout(args: argparse.Namespace, context: Context) -> None:
    """Forget the token kept for this gateway (tokens are not revocable server-side)."""
    if context.store.remove(context.url):
        context.say(f"logged out of {context.url}")
    else:
        context.say(f"not logged in to {context.url}")


def topics(args: argparse.Namespace, context: Context) -> None:
    """List the topics the user may read, as a table or as JSON."""
    found = context.api().get("/topics")["topics"]
    if args.json:
        context.emit(found)
        return
    if not found:
        context.stderr.write("gw: no topics\n")
        return
    rows = [("NAME", "OWNER", "PUBLISH", "SUBSCRIBE", "SUBSCRIBERS")]
    rows += [
        (t["name"], t.get("owner") or "-", t["publish"], t["subscribe"], str(t["subscribers"]))
        for t in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        context.say(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def create(args: argparse.Namespace, context: Context) -> None:
    """Create a topic owned by the user."""
    body = {"name": args.topic}
    if args.publish:
        body["publish"] = args.publish
    if args.subscribe:
        body["subscribe"] = args.subscribe
    answer = context.api().post("/topics", body)
    context.say(
        f"created topic {answer['topic']} "
        f"(publish: {answer['publish']}, subscribe: {answer['subscribe']})"
    )


def delete(args: argparse.Namespace, context: Context) -> None:
    """Delete a topic (its owner or an admin)."""
    answer = context.api().delete(topic_path(args.topic))
    context.say(f"deleted topic {answer['topic']}")


def pub(args: argparse.Namespace, context: Context) -> None:
    """Publish one message over HTTP, or every stdin line over one WebSocket (`-`)."""
    if args.message == "-":
        with Connection.open(context.url, context.bearer(), context.timeout) as connection:
            LinePublisher(connection, args.topic, context.stdout, context.timeout).run(
                context.stdin
            )
        return
    try:
        payload = orjson.loads(args.message)
    except orjson.JSONDecodeError as exc:
        raise BadInput(
            f"the message is not valid JSON ({exc.msg} at column {exc.colno}); nothing was sent"
        ) from None
    body = {"payload": payload}
    if args.id is not None:
        body["id"] = args.id
    context.emit(context.api().post(topic_path(args.topic, "messages"), body))


def sub(args: argparse.Namespace, context: Context) -> None:
    """Follow a topic until it is deleted or revoked, or Ctrl-C."""
    token = context.bearer()
    follower = Follower(
        lambda: Connection.open(context.url, token, context.timeout),
        args.topic,
        context.stdout,
        context.stderr,
        last_n=args.last_n or 0,
        since_seq=args.since_seq,
        timeout=context.timeout,
        backoff=Backoff(cap=args.max_delay),
    )
    follower.run()
