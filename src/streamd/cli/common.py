"""What every ``streamd`` command family shares: exit codes, errors, the endpoint option,
connecting, running a client command on trio, and parsing times and positions.

Exit status (stable, for scripts):

| code | meaning                                                                      |
|------|------------------------------------------------------------------------------|
| 0    | success                                                                      |
| 1    | the request failed with a typed error (``error: CODE: message`` on stderr)   |
| 2    | bad command line; ``serve``: the server could not start (streamd/startup.py)  |
| 3    | the server could not be reached, or the connection broke or timed out       |
| 4    | ``put``: some records failed (the counts say how many; the rest are stored) |
| 130  | interrupted (Ctrl-C)                                                         |

Expected errors never print a traceback; anything else is a bug and does. Family modules
(serve, streams, records, groups, reshard, admin, bench) import this module and the shared helpers
(``endpoint.py``, ``lines.py``), never each other; ``app.py`` assembles the parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

from . import endpoint as cli_endpoint

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_PARTIAL: Final = 4
EXIT_INTERRUPTED: Final = 130
ENDPOINT_ENV: Final = cli_endpoint.ENDPOINT_ENV
ENDPOINT_DEFAULT: Final = cli_endpoint.ENDPOINT_DEFAULT

AsyncCommand = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class CliError(Exception):
    """A user-facing failure that is not a server error (bad --from, malformed JSON input)."""


class UsageError(CliError):
    """A command line that cannot work, found after parsing (exit 2, like argparse's)."""


def add_endpoint(parser: argparse.ArgumentParser) -> None:
    cli_endpoint.add_to(parser)  # also before the command; then $STREAMD_ENDPOINT, the default


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_position(text: str) -> Any:
    """``--from`` value -> streamd_client.Position. Raises CliError."""
    from streamd_client import Position
    from streamd_client.errors import InvalidSequenceNumberError

    kind, _, value = text.partition(":")
    try:
        if text == "trim-horizon":
            return Position.trim_horizon()
        if text == "latest":
            return Position.latest()
        if kind == "at" and value:
            return Position.at_sequence(value)
        if kind == "after" and value:
            return Position.after_sequence(value)
        if kind == "ts" and value:
            return Position.at_timestamp(parse_timestamp_ms(value))
    except InvalidSequenceNumberError as exc:
        raise CliError(f"--from {text!r}: {exc.message}") from None
    raise CliError(
        f"--from {text!r}: expected trim-horizon, latest, at:SEQ, after:SEQ or ts:ISO8601"
    )


def parse_timestamp_ms(text: str) -> int:
    """ISO 8601 (``2024-05-01T12:00:00Z``; naive means UTC) -> ms since the epoch."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def run_client_command(args: argparse.Namespace) -> int:
    """Run ``args.run`` on trio and turn expected errors into a message and an exit code."""
    import anyio

    from streamd_client import errors

    command: AsyncCommand = args.run
    try:
        cli_endpoint.check(args)
    except cli_endpoint.EndpointError as bad_endpoint:
        print_error(str(bad_endpoint))
        return EXIT_USAGE
    try:
        # trio: its worker threads are daemons, so a stdin read abandoned on Ctrl-C cannot hold
        # the process open at exit (asyncio's would).
        return anyio.run(command, args, backend="trio")
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, cli_endpoint.EndpointError):
            print_error(str(exc))
            return EXIT_USAGE
        if isinstance(exc, errors.ConnectionLostError | errors.RequestTimeoutError):
            print_error(f"{exc.code}: {exc.message} (endpoint {args.endpoint})")
            return EXIT_UNREACHABLE
        if isinstance(exc, errors.StreamdError):
            print_error(f"{exc.code}: {exc.message}")
            return EXIT_ERROR
        if isinstance(exc, CliError):
            print_error(str(exc))
            return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        if isinstance(exc, KeyboardInterrupt | BrokenPipeError):
            raise exc from None
        raise


def _leaf(exc: BaseException) -> BaseException:
    """The first meaningful exception inside (possibly nested) exception groups: an
    ``Exception`` rather than a cancellation, which is all a sibling task's failure causes."""
    while isinstance(exc, BaseExceptionGroup):
        inner = list(exc.exceptions)
        exc = ([e for e in inner if isinstance(e, Exception)] or inner)[0]
    return exc


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def connect(args: argparse.Namespace) -> Any:
    """The client for ``args``: endpoint, TLS files and credentials (cli/endpoint.py)."""
    from streamd_client import connect

    endpoint, security = cli_endpoint.security_options(args)
    return connect(endpoint, connect_timeout_s=5.0, request_timeout_s=30.0, **security)


def iso_time(ms: int) -> str:
    """ms since the epoch -> ``2024-05-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
