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
from .serve_security import add_serve_security, check_safe_default, serve_security_options


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
    _add_serve_console(serve)
    _add_serve_cluster(serve)
    _add_serve_limits(serve)
    _add_serve_node_limits(serve)
    _add_serve_quotas(serve)
    add_serve_security(serve)
    serve.set_defaults(handler=_serve)


_QUOTA_FLAGS = (  # (flag, QuotaFigures field, what it limits per shard)
    ("--shard-write-bytes-per-s", "write_bytes_per_s", "bytes written (data + partition key)"),
    ("--shard-write-records-per-s", "write_records_per_s", "records written"),
    ("--shard-read-bytes-per-s", "read_bytes_per_s", "bytes returned by polling reads"),
    ("--shard-read-calls-per-s", "read_calls_per_s", "polling reads (GetRecords, native read)"),
    ("--shard-fanout-bytes-per-s", "fanout_bytes_per_s", "bytes pushed to each fan-out consumer"),
)


def _add_serve_quotas(serve: argparse.ArgumentParser) -> None:
    """Per-shard throughput quotas and on-demand scaling (docs/operations.md)."""
    from ..config import ServerConfig

    serve.add_argument(
        "--quotas", choices=["off", "kinesis"], default="off",
        help="per-shard throughput quotas: off (default) or Kinesis' figures (writes 1 MiB/s and "
        "1000 records/s, reads 2 MiB/s and 5 calls/s, fan-out 2 MiB/s per consumer)",
    )  # fmt: skip
    for flag, _, what in _QUOTA_FLAGS:
        serve.add_argument(
            flag, type=positive_int, default=None, metavar="N",
            help=f"per-shard limit on {what} per second (over --quotas' figure)",
        )  # fmt: skip
    serve.add_argument(
        "--on-demand-shards-max", type=positive_int,
        default=ServerConfig().on_demand_shards_max, metavar="N",
        help="the most open shards an ON_DEMAND stream is scaled to (default %(default)s)",
    )  # fmt: skip


def _serve_quota_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields for the quotas. Raises ValueError naming the flag."""
    from dataclasses import replace

    from streamd_client.errors import StreamdError

    from ..quotas import KINESIS_QUOTAS, QUOTAS_OFF, check_figure

    figures = KINESIS_QUOTAS if args.quotas == "kinesis" else QUOTAS_OFF
    for flag, name, _ in _QUOTA_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            try:
                check_figure(flag, value)
            except StreamdError as exc:
                raise ValueError(exc.message) from None
            figures = replace(figures, **{name: value})
    return {"quotas": figures, "on_demand_shards_max": args.on_demand_shards_max}


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
        "--kinesis-account-id",
        default="000000000000",
        metavar="ID",
        help="the 12-digit account id in ARNs the gateway answers and accepts (default "
        "%(default)s; moto's is 123456789012)",
    )
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


def _add_serve_console(serve: argparse.ArgumentParser) -> None:
    """The operator console's options (docs/console.md)."""
    serve.add_argument(
        "--console-listen",
        default=None,
        metavar="HOST:PORT|off",
        help="operator console in the browser (default 127.0.0.1:8080; off with --cluster "
        "unless given; 'off' disables it)",
    )
    serve.add_argument(
        "--console-read-only",
        action="store_true",
        help="the console shows everything but changes nothing (no admin forms)",
    )


def _serve_console_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields for the console. Raises ValueError naming the flag."""
    from ..config import parse_host_port
    from .serve_security import is_loopback

    listen = args.console_listen
    if listen is None:
        listen = None if args.cluster else "127.0.0.1:8080"
    elif listen == "off":
        listen = None
    if listen is not None:
        try:
            host, _ = parse_host_port(listen, 8080)
        except ValueError as exc:
            raise ValueError(f"--console-listen: {exc}") from None
        if not is_loopback(host) and not args.insecure_no_auth:
            # The console has no TLS: a secret typed into its sign-in would cross in clear.
            raise ValueError(
                f"--console-listen {host} is reachable from other hosts and the console has no "
                "TLS: keep it on 127.0.0.1 (reach it through an SSH tunnel or a TLS proxy), or "
                "pass --insecure-no-auth"
            )
    return {"console_listen": listen, "console_read_only": args.console_read_only}


def _add_serve_cluster(serve: argparse.ArgumentParser) -> None:
    """Cluster mode's options (docs/cluster.md, "Trying it"); without --cluster, embedded."""
    serve.add_argument(
        "--cluster", default=None, metavar="etcd://HOST:PORT[,HOST:PORT...]",
        help="join the cluster whose metadata is in this etcd (default: embedded, one node)",
    )  # fmt: skip
    serve.add_argument(
        "--node-id", default=None, metavar="ID",
        help="this node's name in the cluster, [a-zA-Z0-9_.-]{1,128} (required with --cluster)",
    )  # fmt: skip
    serve.add_argument(
        "--advertise", default=None, metavar="HOST:PORT",
        help="the native address other nodes and clients use (default: --listen)",
    )  # fmt: skip
    serve.add_argument(
        "--advertise-kinesis", default=None, metavar="HOST:PORT",
        help="the Kinesis address the cluster hands out (default: --kinesis-listen)",
    )  # fmt: skip
    serve.add_argument(
        "--cluster-namespace", default=None, metavar="NS",
        help="etcd key prefix of this cluster, ending in '/' (default streamd/)",
    )  # fmt: skip
    serve.add_argument(
        "--cluster-id", default=None, metavar="ID",
        help="refuse to start if etcd holds another cluster's id (default: any)",
    )  # fmt: skip
    serve.add_argument(
        "--replication-factor", type=int, default=None, metavar="N",
        help="replicas per shard of a stream created without saying (cluster; default 3, "
        "at most the nodes live at its creation)",
    )  # fmt: skip
    serve.add_argument(
        "--replica-grace-s", type=float, default=None, metavar="S",
        help="while this node is the controller: replace the replicas of a node lost this "
        "long (cluster; default 300)",
    )  # fmt: skip
    serve.add_argument(
        "--preferred-leader-delay-s", type=float, default=None, metavar="S",
        help="while this node is the controller: give a returning node its leaders back once "
        "it has been live this long (cluster; default 10)",
    )  # fmt: skip


RF_CLUSTER_DEFAULT = 3  # a majority of 3 rides out one lost node


def _serve_cluster_options(
    args: argparse.Namespace, listen: str, kinesis_listen: str | None
) -> dict[str, Any]:
    """ServerConfig fields for cluster mode. Raises ValueError naming the flag."""
    from ..config import parse_cluster_url
    from ..meta.keys import check_name

    if args.cluster is None:
        given = [
            flag
            for flag, value in (
                ("--node-id", args.node_id),
                ("--advertise", args.advertise),
                ("--advertise-kinesis", args.advertise_kinesis),
                ("--cluster-namespace", args.cluster_namespace),
                ("--cluster-id", args.cluster_id),
                ("--replication-factor", args.replication_factor),
                ("--replica-grace-s", args.replica_grace_s),
                ("--preferred-leader-delay-s", args.preferred_leader_delay_s),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} needs --cluster etcd://HOST:PORT (without it the server "
                "runs embedded, on its own)"
            )
        return {}
    try:
        endpoints = parse_cluster_url(args.cluster)
    except ValueError as exc:
        raise ValueError(f"--cluster: {exc}") from None
    if args.node_id is None:
        raise ValueError("--cluster needs --node-id ID (this node's name in the cluster)")
    check_name("--node-id", args.node_id)
    if args.cluster_id is not None:
        check_name("--cluster-id", args.cluster_id)
    namespace = "streamd/" if args.cluster_namespace is None else args.cluster_namespace
    if not namespace.endswith("/") or not namespace.isprintable() or " " in namespace:
        raise ValueError(
            f"--cluster-namespace {namespace!r}: a key prefix without spaces, ending in '/' "
            "(e.g. streamd/ or test-1/)"
        )
    advertise = _advertised("--advertise", args.advertise, "--listen", listen, 7070)
    advertise_kinesis = None
    if kinesis_listen is None:
        if args.advertise_kinesis is not None:
            raise ValueError("--advertise-kinesis with --kinesis-listen off: nothing to advertise")
    else:
        advertise_kinesis = _advertised(
            "--advertise-kinesis", args.advertise_kinesis, "--kinesis-listen", kinesis_listen, 4567
        )
    rf = RF_CLUSTER_DEFAULT if args.replication_factor is None else args.replication_factor
    if not 1 <= rf <= 5:
        raise ValueError(f"--replication-factor {rf}: replicas per shard are 1..5")
    timings = {
        "replica_grace_s": args.replica_grace_s,
        "preferred_leader_delay_s": args.preferred_leader_delay_s,
    }
    for field, seconds in timings.items():
        if seconds is not None and not 0 <= seconds <= 86_400:
            raise ValueError(f"--{field[:-2].replace('_', '-')}-s {seconds}: 0 to 86400 seconds")
    return {
        **{field: seconds for field, seconds in timings.items() if seconds is not None},
        "replication_factor": rf,
        "cluster": endpoints,
        "node_id": args.node_id,
        "advertise": advertise,
        "advertise_kinesis": advertise_kinesis,
        "cluster_namespace": namespace,
        "cluster_id": args.cluster_id,
    }


def _advertised(flag: str, given: str | None, listen_flag: str, listen: str, port: int) -> str:
    """The HOST:PORT to advertise: ``given``, else the listen address if others can reach it."""
    from ..config import is_wildcard_host, parse_host_port

    if given is not None:
        try:
            host, number = parse_host_port(given, port)
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
        if is_wildcard_host(host) or given.startswith(":") or number == 0:
            raise ValueError(f"{flag} {given!r}: give the host and port others connect to")
        return _join_host_port(host, number)
    host, number = parse_host_port(listen, port)
    if is_wildcard_host(host) or listen.startswith(":"):
        raise ValueError(
            f"{listen_flag} {listen} listens on every interface: say with {flag} HOST:PORT "
            "which address other nodes and clients should use"
        )
    if number == 0:
        raise ValueError(
            f"{listen_flag} {listen}: port 0 in cluster mode needs {flag} HOST:PORT "
            "(other nodes need a fixed address)"
        )
    return _join_host_port(host, number)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    kinesis = _serve_kinesis_options(args)
    config = ServerConfig(
        data_dir=args.data_dir,
        listen_host=host,
        listen_port=port,
        fsync=args.fsync,
        log_format=args.log_format,
        log_level=args.log_level,
        metrics_listen=args.metrics_listen,
        **kinesis,
        **_serve_console_options(args),
        **_serve_cluster_options(args, args.listen, kinesis["kinesis_listen"]),
        **_serve_limit_options(args),
        **_serve_quota_options(args),
        **serve_security_options(args),
    )
    kinesis_host = None
    if kinesis["kinesis_listen"] is not None:
        kinesis_host = parse_host_port(kinesis["kinesis_listen"], 4567)[0]
    check_safe_default(args, host, kinesis_host)
    return config


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
    account = args.kinesis_account_id
    if not (len(account) == 12 and account.isascii() and account.isdigit()):
        raise ValueError(f"--kinesis-account-id: expected 12 digits, got {account!r}")
    credentials: tuple[tuple[str, str], ...] = ()
    if args.kinesis_access_key is not None:
        credentials = ((args.kinesis_access_key, secret_from_environment(os.environ)),)
    if args.kinesis_credentials is not None:
        credentials += load_credentials_file(args.kinesis_credentials)
    return {
        "kinesis_listen": listen,
        "kinesis_region": args.kinesis_region,
        "kinesis_account_id": account,
        "kinesis_credentials": credentials,
    }
