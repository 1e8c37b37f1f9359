"""Where the client commands connect: ``--endpoint`` anywhere, ``$STREAMD_ENDPOINT``, a default.

``--endpoint HOST:PORT`` (or a cluster's bootstrap list ``H1:P1,H2:P2``) is accepted before
the command (``streamd --endpoint H:P stream list``)
and after it (``streamd stream list --endpoint H:P``); the last one given wins, then
``$STREAMD_ENDPOINT``, then ``127.0.0.1:7070``. Every parser declares it with a suppressed
default, because argparse copies a subcommand's defaults over what the main parser already
parsed: a default of None at the subcommand would erase an ``--endpoint`` given before it.
``resolve`` fills in the environment and the default after parsing, for the commands that take
them (``bench`` does not: without ``--endpoint`` it starts its own server).

TLS: ``tls://HOST:PORT[,HOST:PORT]`` connects with TLS; ``--tls-ca FILE`` (the CA to trust;
default the system's), ``--tls-cert FILE --tls-key FILE`` (a client certificate, mutual TLS),
each also from ``$STREAMD_TLS_CA``/``$STREAMD_TLS_CERT``/``$STREAMD_TLS_KEY``; any of them
turns TLS on for a plain ``HOST:PORT`` too. Credentials come from the environment only
(``$STREAMD_ACCESS_KEY_ID`` and ``$STREAMD_SECRET_ACCESS_KEY``): never a flag, which ``ps``
would show.

``check`` refuses what cannot be a native endpoint before any connection is tried, saying what
was found and what to give instead: a URL (``http://...`` is how the Kinesis API is addressed,
by boto3 and ``aws --endpoint-url``, not the native protocol) or a value without a port.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Final

ENDPOINT_ENV: Final = "STREAMD_ENDPOINT"
ENDPOINT_DEFAULT: Final = "127.0.0.1:7070"
_FROM_ENV: Final = "endpoint_from_env"
_SOURCE: Final = "endpoint_source"
TLS_FLAGS: Final = (
    ("--tls-ca", "tls_ca", "STREAMD_TLS_CA", "the CA certificate (PEM) to trust for TLS"),
    ("--tls-cert", "tls_cert", "STREAMD_TLS_CERT", "a client certificate (PEM), mutual TLS"),
    ("--tls-key", "tls_key", "STREAMD_TLS_KEY", "the client certificate's key (PEM)"),
)
ACCESS_KEY_ENV: Final = "STREAMD_ACCESS_KEY_ID"
SECRET_KEY_ENV: Final = "STREAMD_SECRET_ACCESS_KEY"


def _add_tls(parser: argparse.ArgumentParser) -> None:
    for flag, _, env, what in TLS_FLAGS:
        parser.add_argument(
            flag, default=argparse.SUPPRESS, metavar="FILE", help=f"{what} (default: ${env})"
        )


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
    _add_tls(parser)


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
    _add_tls(parser)
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
    for _, name, env, _ in TLS_FLAGS:
        if getattr(args, name, None) is None:
            setattr(args, name, os.environ.get(env) or None)


def security_options(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The endpoint to connect to and ``connect``'s security keywords (TLS files, the
    credentials from the environment). Raises EndpointError (a secret without its key id)."""
    from streamd_client.security import TLS_SCHEME

    endpoint = args.endpoint
    files = {name: getattr(args, name, None) for _, name, _, _ in TLS_FLAGS}
    if any(files.values()) and not endpoint.startswith(TLS_SCHEME):
        endpoint = TLS_SCHEME + endpoint
    key_id = os.environ.get(ACCESS_KEY_ENV) or None
    secret = os.environ.get(SECRET_KEY_ENV) or None
    if (key_id is None) != (secret is None):
        raise EndpointError(f"${ACCESS_KEY_ENV} and ${SECRET_KEY_ENV} go together")
    options: dict[str, Any] = {
        "ca": files["tls_ca"],
        "cert": files["tls_cert"],
        "key": files["tls_key"],
    }
    if key_id is not None and secret is not None:
        options["credentials"] = (key_id, secret)
    return endpoint, options


def check(args: argparse.Namespace) -> None:
    """Raise EndpointError if ``args.endpoint`` cannot be a native HOST:PORT (or a bootstrap
    list of them, ``h1:7070,h2:7070``)."""
    from streamd_client.connection import parse_bootstrap
    from streamd_client.errors import InvalidArgumentError
    from streamd_client.security import split_scheme

    endpoint = args.endpoint
    if endpoint is None:
        return
    source = getattr(args, _SOURCE, "--endpoint")
    try:
        parse_bootstrap(split_scheme(endpoint)[1])
    except InvalidArgumentError as exc:
        raise EndpointError(f"{source}: {exc.message}") from None
