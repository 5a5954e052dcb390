"""Exit codes that scripts can rely on (docs/cli.md#exit-codes), and the errors carrying them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What `gw` exits with; documented in docs/cli.md#exit-codes."""

    OK = 0
    REFUSED = 1  # the gateway answered, and refused (an HTTP 4xx, a WebSocket `error`)
    USAGE = 2  # a bad command line (argparse's own code)
    UNREACHABLE = 3  # no connection, a connection lost, no answer in time, or an HTTP 5xx
    AUTH = 4  # not logged in, the token rejected, wrong username or password
    BAD_INPUT = 5  # a message (argument or stdin line) that is not JSON, no password given
    TOPIC_GONE = 6  # sub: the topic was deleted (or is gone after a reconnect)
    ACCESS_REVOKED = 7  # sub: the user was taken off a members-only topic
    INTERRUPTED = 130  # Ctrl-C, except in `sub` where Ctrl-C is the normal way out (0)


class CliError(Exception):
    """A failure to report as `gw: <message>` on stderr, exiting with `exit_code`."""

    exit_code = ExitCode.REFUSED


class Refused(CliError):
    """The gateway refused the request; the message names its status or error code."""

    exit_code = ExitCode.REFUSED


class Unreachable(CliError):
    """The gateway could not be reached, dropped the connection or is unavailable."""

    exit_code = ExitCode.UNREACHABLE


class AuthFailed(CliError):
    """No token, a rejected token, or wrong credentials."""

    exit_code = ExitCode.AUTH


class BadInput(CliError):
    """Input that cannot be sent: a message that is not JSON, a missing password."""

    exit_code = ExitCode.BAD_INPUT


class TopicGone(CliError):
    """The followed topic was deleted, or no longer exists after a reconnect."""

    exit_code = ExitCode.TOPIC_GONE


class AccessRevoked(CliError):
    """The user may no longer read the followed topic."""

    exit_code = ExitCode.ACCESS_REVOKED
