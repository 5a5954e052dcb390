"""`gw`: the command line (docs/cli.md). Parses it, runs a command, maps errors to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from gateway.client import commands
from gateway.client.errors import CliError, ExitCode

DEFAULT_URL = "http://127.0.0.1:8000"

EPILOG = f"""\
environment:
  GATEWAY_URL    the gateway, when --url is not given (default {DEFAULT_URL})
  GATEWAY_TOKEN  a token to use instead of the one kept by `gw login`

exit codes: 0 ok, 1 refused by the gateway, 2 bad command line, 3 gateway unreachable or
unavailable, 4 not logged in or token rejected, 5 input not JSON, 6 topic deleted (sub),
7 access revoked (sub), 130 interrupted. See docs/cli.md.
"""


def gateway_url(text: str) -> str:
    """Check an http(s) URL with a host; return it without a trailing slash."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL with a host: {text!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"a gateway URL has no query or fragment: {text!r}")
    return text.rstrip("/")


def non_negative(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not an integer >= 0: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds > 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole command line."""
    # The global options are accepted before and after the subcommand (`gw sub t --url ...`);
    # SUPPRESS keeps a subcommand's parser from overwriting them with its defaults.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", type=gateway_url, default=argparse.SUPPRESS, help="the gateway's base URL"
    )
    common.add_argument("--token", default=argparse.SUPPRESS, help="a token to use")
    common.add_argument(
        "--timeout",
        type=positive_seconds,
        default=argparse.SUPPRESS,
        help="seconds to wait for a connection or an answer (default 10)",
    )
    parser = argparse.ArgumentParser(
        prog="gw",
        description="Command-line client of the pub/sub gateway.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, parents=[common], help=help, description=help)
        found.set_defaults(run=run)
        return found

    for name, run, help in (
        ("register", commands.register, "create an account (and keep its token)"),
        ("login", commands.login, "log in and keep the token for this gateway"),
    ):
        p = command(name, run, help)
        p.add_argument("username")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        if name == "register":
            p.add_argument("--email", help="an email address for the account")
    command("logout", commands.logout, "forget the token kept for this gateway")
    p = command("topics", commands.topics, "list the topics you may read")
    p.add_argument("--json", action="store_true", help="print the list as one JSON line")
    p = command("create", commands.create, "create a topic that you own")
    p.add_argument("topic")
    p.add_argument("--publish", choices=("anyone", "members", "owner"), help="default anyone")
    p.add_argument("--subscribe", choices=("anyone", "members"), help="default anyone")
    p = command("delete", commands.delete, "delete a topic that you own")
    p.add_argument("topic")
    p = command("pub", commands.pub, "publish a JSON message, or each stdin line with -")
    p.add_argument("topic")
    p.add_argument("message", metavar="JSON", help="the payload as JSON, or - for stdin lines")
    p.add_argument("--id", help="the message id (one message only; default: generated)")
    p = command("sub", commands.sub, "print a topic's messages, one JSON per line")
    p.add_argument("topic")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--last-n", type=non_negative, metavar="N", help="first replay the last N messages"
    )
    start.add_argument(
        "--since-seq", type=non_negative, metavar="N", help="start after seq N (a resume)"
    )
    p.add_argument(
        "--max-delay",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between reconnects (default 30)",
    )
    return parser


def context_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> commands.Context:
    """Resolve the gateway, the token and the timeout from options and environment."""
    url = getattr(args, "url", None)
    if url is None:
        try:
            url = gateway_url(os.environ.get("GATEWAY_URL") or DEFAULT_URL)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"GATEWAY_URL: {exc}")
    token = getattr(args, "token", None) or os.environ.get("GATEWAY_TOKEN") or None
    return commands.Context(url=url, token=token, timeout=getattr(args, "timeout", 10.0))


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gw` with `argv` (default: sys.argv[1:]) and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    context = context_of(args, parser)
    try:
        args.run(args, context)
    except CliError as exc:
        sys.stderr.write(f"gw: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C is how `sub` is meant to end; elsewhere it interrupted something.
        return ExitCode.OK if args.command == "sub" else ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`gw sub t | head -3`): stop quietly, and point
        # stdout at /dev/null so that the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    return ExitCode.OK
