"""``streamd dev cluster``: a local etcd and N nodes in the foreground, to try cluster mode.

    streamd dev cluster [--nodes 3] [--dir ./streamd-cluster] [--base-port 7071]
                        [--kinesis-base-port 4571] [--etcd-port 2379]

It runs ``streamd.testing.cluster.LocalCluster``, the class the 3-node tests use, so what a user
tries is what the tests check: etcd with its data under ``DIR/etcd`` and node K as ``streamd
serve --cluster etcd://... --node-id nodeK --listen 127.0.0.1:<base+K-1> --kinesis-listen
127.0.0.1:<kinesis base+K-1> --data-dir DIR/nodeK`` (logs in ``DIR/nodeK.server.log``). Once
every node has printed its ready line it prints where everything is and how to reach it, then
``streamd dev cluster ready: N node(s)`` (the line scripts wait for), and waits.

Ctrl-C or SIGTERM stops it all: the nodes first (SIGTERM to all, SIGKILL after a grace), then
etcd; a second Ctrl-C while stopping SIGKILLs what is left at once. The children run in their own
process group, so a terminal's Ctrl-C reaches only this process, which stops them in that order;
they also die with it if it is killed (``PR_SET_PDEATHSIG``). If a child exits by itself, that is
said (with the end of its log) and the rest is stopped. Ports 0 pick free ones (tests use that).
Data stays in DIR: running it again restarts the same cluster.

Exit status: 0 stopped by a signal, 1 a child died, 2 it could not start (a port in use, no
etcd installed: the message says which and the flag that changes it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

from .common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, print_error

NODES_MAX: Final = 16
POLL_S: Final = 0.2
_LOG_LINES_SHOWN: Final = 5


class _Stop(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: it must unwind)."""


def register(commands: Any) -> None:
    """Add ``streamd dev ...`` to the CLI's subparsers."""
    parser = commands.add_parser("dev", help="local development helpers (a local cluster)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    cluster = actions.add_parser(
        "cluster",
        help="run a local etcd and N nodes until Ctrl-C",
        description="Start a local etcd and N streamd nodes on loopback, print their addresses, "
        "and stop them all on Ctrl-C or SIGTERM.",
    )
    cluster.add_argument(
        "--nodes", type=_node_count, default=3, metavar="N", help="nodes (default 3)"
    )
    cluster.add_argument(
        "--dir",
        type=Path,
        default=Path("./streamd-cluster"),
        metavar="DIR",
        help="data of etcd (DIR/etcd) and of each node (DIR/nodeK); default ./streamd-cluster",
    )
    cluster.add_argument(
        "--base-port",
        type=_port,
        default=7071,
        metavar="PORT",
        help="node K's native port is PORT+K-1 (default 7071; 0: free ports)",
    )
    cluster.add_argument(
        "--kinesis-base-port",
        type=_port,
        default=4571,
        metavar="PORT",
        help="node K's Kinesis port is PORT+K-1 (default 4571; 0: free ports)",
    )
    cluster.add_argument(
        "--etcd-port",
        type=_port,
        default=2379,
        metavar="PORT",
        help="etcd's client port; its peer port is the next one (default 2379; 0: free ports)",
    )
    cluster.set_defaults(handler=_dev_cluster)
    certs = actions.add_parser(
        "certs",
        help="write a local CA and server/client certificates into DIR (for trying TLS)",
        description="Write ca.pem, ca.key, server.pem, server.key, client.pem and client.key "
        "into DIR (keys 0600; never overwrites). The server certificate names localhost, "
        "127.0.0.1 and ::1, plus each --host.",
    )
    certs.add_argument("dir", type=Path, metavar="DIR")
    certs.add_argument(
        "--host", action="append", default=[], metavar="NAME",
        help="another name or IP address for the server certificate (repeatable)",
    )  # fmt: skip
    certs.add_argument("--days", type=int, default=365, metavar="N", help="validity (365)")
    certs.set_defaults(handler=_dev_certs)


def _dev_certs(args: argparse.Namespace) -> int:
    from ..security.certs import write_dev_certs

    if not 1 <= args.days <= 3650:
        print("error: --days must be 1..3650", file=sys.stderr)
        return EXIT_USAGE
    try:
        written = write_dev_certs(args.dir, args.host, args.days)
    except OSError as exc:
        print(f"error: {exc} (choose another DIR, or remove them)", file=sys.stderr)
        return EXIT_USAGE
    for path in written:
        print(path)
    ca, cert, key = (args.dir / n for n in ("ca.pem", "server.pem", "server.key"))
    print(f"serve with: streamd serve --tls-cert {cert} --tls-key {key}")
    print(f"connect with: streamd --endpoint tls://127.0.0.1:7070 --tls-ca {ca} stream list")
    return EXIT_OK


def _node_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= NODES_MAX:
        raise argparse.ArgumentTypeError(f"must be 1..{NODES_MAX}, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port (0..65535), got {value}")
    return value


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _dev_cluster(args: argparse.Namespace) -> int:
    from ..testing.cluster import ClusterStartError, LocalCluster
    from ..testing.etcd import EtcdNotInstalledError

    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster: LocalCluster | None = None
    try:
        try:
            cluster = LocalCluster(
                args.nodes,
                root_dir=args.dir,
                base_port=args.base_port,
                kinesis_base_port=args.kinesis_base_port,
                etcd_port=args.etcd_port,
                log_format="console",
                own_process_group=True,
            )
        except ValueError as exc:
            print_error(str(exc))
            return EXIT_USAGE
        print(f"starting etcd and {args.nodes} node(s) under {args.dir} ...", flush=True)
        try:
            cluster.start()
        except EtcdNotInstalledError as exc:
            print_error(str(exc))
            return EXIT_USAGE
        except ClusterStartError as exc:
            print_error(_start_failure(cluster, exc))
            return EXIT_USAGE
        _print_where(cluster, args.dir)
        return _watch(cluster)
    except _Stop:
        return EXIT_OK  # stopped before it was up: the finally below stops what started
    finally:
        if cluster is not None:
            _stop(cluster)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _watch(cluster: Any) -> int:
    """Wait for a signal (``_Stop`` unwinds out of here) or a child's exit."""
    while True:
        gone = cluster.exited()
        if gone:
            for part, status in sorted(gone.items()):
                print_error(f"{part} exited with status {status}; stopping the rest")
                _show_log(cluster, part)
            return EXIT_ERROR
        time.sleep(POLL_S)


def _stop(cluster: Any) -> None:
    """Stop everything; a signal meanwhile SIGKILLs what is left (the waits then end at once)."""

    def hurry(signum: int, frame: FrameType | None) -> None:
        os.write(sys.stderr.fileno(), b"killing what is left\n")  # no buffered I/O in here
        cluster.signal_all(signal.SIGKILL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, hurry)
    print("stopping the nodes, then etcd ...", flush=True)
    cluster.close()
    print("stopped", flush=True)


def _start_failure(cluster: Any, exc: Any) -> str:
    """One line for a start that failed: the part, the child's own error line, the flag."""
    if exc.part == "etcd":
        reason = str(exc).splitlines()[0]
        return f"{reason}; choose another with --etcd-port PORT"
    log = cluster.node(exc.part).log_tail()
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    reason = errors[-1][len("error: ") :] if errors else str(exc).splitlines()[0]
    hint = ""
    if "address already in use" in reason:
        hint = " (node ports come from --base-port and --kinesis-base-port)"
    return f"{exc.part} did not start: {reason}{hint}; its log: {cluster.node(exc.part).log_path}"


def _show_log(cluster: Any, part: str) -> None:
    if part == "etcd":
        tail, path = cluster.etcd.log_tail(), cluster.etcd.log_path
    else:
        tail, path = cluster.node(part).log_tail(), cluster.node(part).log_path
    for line in tail.splitlines()[-_LOG_LINES_SHOWN:]:
        print(f"  {line}", file=sys.stderr)
    print(f"  (the whole log: {path})", file=sys.stderr, flush=True)


def _print_where(cluster: Any, root: Path) -> None:
    url = cluster.cluster_url
    first = next(iter(cluster.nodes.values()))
    kinesis = first.kinesis_endpoint
    lines = [
        f"etcd     {url}  (data {root / 'etcd'}, log {cluster.etcd.log_path})",
    ]
    for node_id, node in cluster.nodes.items():
        lines.append(
            f"{node_id:<8} native {node.endpoint}  kinesis {node.kinesis_endpoint}  "
            f"(data {node.data_dir}, log {node.log_path})"
        )
    two = ",".join(n.endpoint for n in list(cluster.nodes.values())[:2])
    lines += [
        "",
        "try, in another terminal:",
        f"  streamd cluster status --cluster {url}",
        f"  streamd --endpoint {two} stream create demo --shards 12",
        f"  seq 1 5 | streamd --endpoint {two} put demo --random-key",
        f"  streamd --endpoint {cluster.bootstrap} read demo",
        f"  aws --endpoint-url {kinesis} --region us-east-1 kinesis list-streams",
        f'  boto3.client("kinesis", endpoint_url="{kinesis}", region_name="us-east-1", '
        'aws_access_key_id="x", aws_secret_access_key="x")',
        "Ctrl-C stops everything.",
        f"streamd dev cluster ready: {len(cluster.nodes)} node(s)",
    ]
    print("\n".join(lines), flush=True)
