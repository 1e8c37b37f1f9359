"""``streamd cluster status``: what the cluster's etcd says (registered by app.py).

    streamd cluster status [--cluster etcd://HOST:PORT[,...]] [--cluster-namespace NS] [--json]

It reads the keyspace once, straight from etcd (no node needs to be up: a cluster whose nodes are
all down still shows which nodes its shards name), through ``controller/status.py``:
``read_status`` then ``render`` (or the same summary as JSON). ``--cluster`` defaults to
``$STREAMD_CLUSTER``, else ``etcd://127.0.0.1:2379`` (where ``streamd dev cluster`` puts etcd).

Exit statuses are the CLI's (common.py): 0 ok, 1 etcd refused the request (or is not etcd),
2 usage (a bad URL or namespace), 3 etcd unreachable or too slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Final

from .common import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, print_error

CLUSTER_ENV: Final = "STREAMD_CLUSTER"
CLUSTER_DEFAULT: Final = "etcd://127.0.0.1:2379"
REQUEST_TIMEOUT_S: Final = 3.0


def register(commands: Any) -> None:
    """Add ``streamd cluster ...`` to the CLI's subparsers."""
    parser = commands.add_parser("cluster", help="a cluster's state in etcd (nodes, shards)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="nodes, liveness, addresses, shards and leaders per node",
        description="Read the cluster's keys in etcd once and show the cluster id, the active "
        "controller (marked *), and per node whether it is live, its native and Kinesis "
        "addresses, and how many shard replicas and leaders it holds.",
    )
    status.add_argument(
        "--cluster",
        default=None,
        metavar="etcd://HOST:PORT[,...]",
        help=f"the cluster's etcd (default ${CLUSTER_ENV}, else {CLUSTER_DEFAULT})",
    )
    status.add_argument(
        "--cluster-namespace",
        default="streamd/",
        metavar="NS",
        help="the cluster's etcd key prefix, as given to serve (default streamd/)",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    import anyio
    import structlog

    from streamd_client.errors import MetadataUnavailableError

    from .. import log
    from ..config import parse_cluster_url
    from ..meta.errors import MetaError

    if args.cluster is not None:
        url, source = args.cluster, "--cluster"
    elif os.environ.get(CLUSTER_ENV):
        url, source = os.environ[CLUSTER_ENV], f"${CLUSTER_ENV}"
    else:
        url, source = CLUSTER_DEFAULT, "the default"
    try:
        endpoints = parse_cluster_url(url)
    except ValueError as exc:
        print_error(f"{source}: {exc}")
        return EXIT_USAGE
    if not args.cluster_namespace.endswith("/"):
        print_error(f"--cluster-namespace {args.cluster_namespace!r}: must end in '/'")
        return EXIT_USAGE
    saved_logging = structlog.get_config()
    log.configure("console", "error")  # the etcd client's retries are not this command's output
    try:
        status = anyio.run(_read, endpoints, args.cluster_namespace, backend="trio")
    except MetadataUnavailableError as exc:
        print_error(
            f"etcd at {url} is unreachable or did not answer in time: {exc.message} "
            f"(is the cluster's etcd running? `streamd dev cluster` starts one)"
        )
        return EXIT_UNREACHABLE
    except MetaError as exc:
        print_error(f"etcd at {url} refused the status read: {exc}")
        return EXIT_ERROR
    finally:  # as it was: main() may run in a process that logs on (tests, scripts)
        structlog.configure(**saved_logging)
    if args.json:
        print(json.dumps(dataclasses.asdict(status), sort_keys=True))
        return EXIT_OK
    from ..controller.status import render

    print(render(status))
    if status.cluster_id is None and not status.nodes:
        print(
            f"(nothing under namespace {args.cluster_namespace!r} in {url} yet: no node has "
            "joined, or the cluster uses another --cluster-namespace)"
        )
    return EXIT_OK


async def _read(endpoints: tuple[str, ...], namespace: str) -> Any:
    from ..controller.status import read_status
    from ..meta.etcd import EtcdMetaStore

    store = await EtcdMetaStore.connect(
        endpoints, namespace=namespace, request_timeout_s=REQUEST_TIMEOUT_S
    )
    try:
        return await read_status(store, request_timeout_s=REQUEST_TIMEOUT_S)
    finally:
        await store.aclose()
