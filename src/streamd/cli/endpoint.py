"""Where the client commands connect: ``--endpoint`` anywhere, ``$STREAMD_ENDPOINT``, a default.

``--endpoint HOST:PORT`` (or a cluster's bootstrap list ``H1:P1,H2:P2``) is accepted before
the command (``streamd --endpoint H:P stream list``)
and after it (``streamd stream list --endpoint H:P``); the last one given wins, then
``$STREAMD_ENDPOINT``, then ``127.0.0.1:7070``. Every parser declares it with a suppressed
default, because argparse copies a subcommand's defaults over what the main parser already
parsed: a default of None at the subcommand would erase an ``--endpoint`` given before it.
``resolve`` fills in the environment and the default after parsing, for the commands that take
them (``bench`` does not: without ``--endpoint`` it starts its own server).

``check`` refuses what cannot be a native endpoint before any connection is tried, saying what
was found and what to give instead: a URL (``http://...`` is how the Kinesis API is addressed,
by boto3 and ``aws --endpoint-url``, not the native protocol) or a value without a port.
"""

from __future__ import annotations

import argparse
import os
from typing import Final

ENDPOINT_ENV: Final = "STREAMD_ENDPOINT"
ENDPOINT_DEFAULT: Final = "127.0.0.1:7070"
_FROM_ENV: Final = "endpoint_from_env"
_SOURCE: Final = "endpoint_source"


class EndpointError(ValueError):
    """The endpoint cannot be a streamd server's native address; the message says why."""


def add_global(parser: argparse.ArgumentParser) -> None:
    """``--endpoint`` on the main parser (before the command)."""
    parser.add_argument(
        "--endpoint",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT[,HOST:PORT]",
        help="server address (a cluster: any nodes, comma-separated) for client commands "
        f"(default: ${ENDPOINT_ENV}, else {ENDPOINT_DEFAULT}); also accepted after the command",
    )


def add_to(parser: argparse.ArgumentParser, *, from_env: bool = True) -> None:
    """``--endpoint`` on one command; ``from_env``: fall back to $STREAMD_ENDPOINT and the
    default when it is given nowhere."""
    parser.add_argument(
        "--endpoint",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT[,HOST:PORT]",
        help="server address, or several nodes of a cluster "
        f"(default: ${ENDPOINT_ENV}, else {ENDPOINT_DEFAULT})",
    )
    parser.set_defaults(**{_FROM_ENV: from_env})


def resolve(args: argparse.Namespace) -> None:
    """Set ``args.endpoint`` (None for a command that has no default) and where it came from."""
    given = getattr(args, "endpoint", None)
    if given is not None:
        args.endpoint, source = given, "--endpoint"
    elif getattr(args, _FROM_ENV, False):
        environment = os.environ.get(ENDPOINT_ENV)
        if environment:
            args.endpoint, source = environment, f"${ENDPOINT_ENV}"
        else:
            args.endpoint, source = ENDPOINT_DEFAULT, "the default endpoint"
    else:
        args.endpoint, source = None, ""
    setattr(args, _SOURCE, source)


def check(args: argparse.Namespace) -> None:
    """Raise EndpointError if ``args.endpoint`` cannot be a native HOST:PORT (or a bootstrap
    list of them, ``h1:7070,h2:7070``)."""
    from streamd_client.connection import parse_bootstrap
    from streamd_client.errors import InvalidArgumentError

    endpoint = args.endpoint
    if endpoint is None:
        return
    source = getattr(args, _SOURCE, "--endpoint")
    try:
        parse_bootstrap(endpoint)
    except InvalidArgumentError as exc:
        raise EndpointError(f"{source}: {exc.message}") from None
