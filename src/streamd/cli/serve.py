"""``streamd serve``: the server's flags, turned into a ServerConfig and run by streamd/node.py.

A server that cannot start says why in one line and exits 2 (streamd/startup.py). The server is
imported only when ``serve`` runs, so client commands start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_OK, EXIT_USAGE, positive_float, positive_int


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run a server (until SIGINT/SIGTERM)")
    serve.add_argument("--data-dir", type=Path, default=Path("./streamd-data"), metavar="DIR")
    serve.add_argument("--listen", default="127.0.0.1:7070", metavar="HOST:PORT")
    serve.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default="always",
        help="always: ack after fdatasync (durable); interval/never: faster, may lose acked "
        "records on power loss (docs/operations.md)",
    )
    serve.add_argument("--log-format", choices=["console", "json"], default="console")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    serve.add_argument(
        "--metrics-listen", default=None, metavar="HOST:PORT", help="serve Prometheus /metrics"
    )
    _add_serve_kinesis(serve)
    _add_serve_limits(serve)
    _add_serve_node_limits(serve)
    serve.set_defaults(handler=_serve)


def _add_serve_node_limits(serve: argparse.ArgumentParser) -> None:
    """Per-node resource bounds (docs/operations.md, "Shards per node")."""
    from ..config import ServerConfig

    defaults = ServerConfig()
    serve.add_argument(
        "--shards-max",
        type=positive_int,
        default=defaults.shards_max,
        metavar="N",
        help="shards this node may hold (default %(default)s; the open-files limit may allow "
        "fewer)",
    )
    serve.add_argument(
        "--segment-fds-max",
        type=positive_int,
        default=defaults.segment_fds_max,
        metavar="N",
        help="segment files kept open at once (default %(default)s)",
    )
    serve.add_argument(
        "--io-threads-max",
        type=positive_int,
        default=defaults.io_threads_max,
        metavar="N",
        help="threads for shard writes and syncs, shared by all shards (default %(default)s)",
    )


def _add_serve_kinesis(serve: argparse.ArgumentParser) -> None:
    """The Kinesis-compatible HTTP gateway's options (docs/kinesis.md)."""
    serve.add_argument(
        "--kinesis-listen",
        default="127.0.0.1:4567",
        metavar="HOST:PORT|off",
        help="Kinesis API (boto3, aws CLI) address (default 127.0.0.1:4567; 'off' disables it)",
    )
    serve.add_argument("--kinesis-region", default="us-east-1", metavar="REGION")
    serve.add_argument(
        "--kinesis-access-key",
        default=None,
        metavar="KEY_ID",
        help="one key pair; its secret comes from $STREAMD_KINESIS_SECRET_KEY",
    )
    # Refused with a clear message (a secret on a command line shows in ps), not just unknown.
    serve.add_argument("--kinesis-secret-key", default=None, help=argparse.SUPPRESS)
    serve.add_argument(
        "--kinesis-credentials",
        type=Path,
        default=None,
        metavar="FILE",
        help="AWS credentials file (INI); with any credentials, requests must be SigV4-signed",
    )


def _add_serve_limits(serve: argparse.ArgumentParser) -> None:
    """Connection bounds and timeouts, for each listener (docs/operations.md, "Connections")."""
    serve.add_argument(
        "--connections-max", type=positive_int, default=1024, metavar="N",
        help="open connections per listener (native, Kinesis); more are refused (default 1024)",
    )  # fmt: skip
    serve.add_argument(
        "--connections-per-address-max", type=positive_int, default=None, metavar="N",
        help="open connections from one client address (default: a quarter of --connections-max)",
    )  # fmt: skip
    serve.add_argument(
        "--handshake-timeout-s", type=positive_float, default=10.0, metavar="S",
        help="a new connection's time to send its hello (Kinesis: its first request; default 10)",
    )  # fmt: skip
    serve.add_argument(
        "--idle-timeout-s", type=positive_float, default=600.0, metavar="S",
        help="close a native connection with no request in flight for S seconds (default 600)",
    )  # fmt: skip
    serve.add_argument(
        "--kinesis-idle-timeout-s", type=positive_float, default=120.0, metavar="S",
        help="close an idle Kinesis keep-alive connection after S seconds (default 120)",
    )  # fmt: skip


def _serve_limit_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields for the connection bounds and timeouts."""
    return {
        "connections_max": args.connections_max,
        "connections_per_address_max": args.connections_per_address_max,
        "handshake_timeout_ms": round(args.handshake_timeout_s * 1000),
        "idle_timeout_ms": round(args.idle_timeout_s * 1000),
        "kinesis_idle_timeout_ms": round(args.kinesis_idle_timeout_s * 1000),
        "shards_max": args.shards_max,
        "segment_fds_max": args.segment_fds_max,
        "io_threads_max": args.io_threads_max,
    }


def _serve(args: argparse.Namespace) -> int:
    """``streamd serve``. A server that cannot start says why in one line and exits 2."""
    from ..startup import StartupError

    try:
        config = _serve_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .. import log
    from ..node import run_server

    log.configure(args.log_format, args.log_level)
    try:
        run_server(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _serve_config(args: argparse.Namespace) -> Any:
    """The ServerConfig ``serve``'s flags describe. Raises ValueError naming the flag."""
    from ..config import ServerConfig, parse_host_port

    try:
        host, port = parse_host_port(args.listen)
    except ValueError as exc:
        raise ValueError(f"--listen: {exc}") from None
    if args.metrics_listen:
        try:
            parse_host_port(args.metrics_listen, 9464)
        except ValueError as exc:
            raise ValueError(f"--metrics-listen: {exc}") from None
    return ServerConfig(
        data_dir=args.data_dir,
        listen_host=host,
        listen_port=port,
        fsync=args.fsync,
        log_format=args.log_format,
        log_level=args.log_level,
        metrics_listen=args.metrics_listen,
        **_serve_kinesis_options(args),
        **_serve_limit_options(args),
    )


def _serve_kinesis_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields for the Kinesis gateway. Raises ValueError on a bad combination."""
    from ..config import parse_host_port
    from ..frontends.kinesis.credentials import (
        SECRET_ENV,
        load_credentials_file,
        secret_from_environment,
    )

    listen = None if args.kinesis_listen == "off" else args.kinesis_listen
    if listen is not None:
        try:
            parse_host_port(listen, 4567)
        except ValueError as exc:
            raise ValueError(f"--kinesis-listen: {exc}") from None
    if args.kinesis_secret_key is not None:
        raise ValueError(
            "--kinesis-secret-key is not accepted: a secret on the command line shows in ps; "
            f"set ${SECRET_ENV} (with --kinesis-access-key) or use --kinesis-credentials FILE"
        )
    credentials: tuple[tuple[str, str], ...] = ()
    if args.kinesis_access_key is not None:
        credentials = ((args.kinesis_access_key, secret_from_environment(os.environ)),)
    if args.kinesis_credentials is not None:
        credentials += load_credentials_file(args.kinesis_credentials)
    return {
        "kinesis_listen": listen,
        "kinesis_region": args.kinesis_region,
        "kinesis_credentials": credentials,
    }
