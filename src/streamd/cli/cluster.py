"""``streamd cluster ...``: the cluster's state and replica moves, in etcd (registered by app.py).

    streamd cluster status [--cluster etcd://HOST:PORT[,...]] [--cluster-namespace NS] [--json]
    streamd cluster move-replica STREAM SHARD_ID --from NODE --to NODE [--no-wait]
    streamd cluster drain NODE [--no-wait]
    streamd cluster undrain NODE

``move-replica`` writes a ``moves/`` request and ``drain`` a ``drains/`` key; the controller
carries them out one change per shard at a time (controller/decisions.py: the new replica
joins, catches up from the leader, then votes). Unless ``--no-wait`` they print a line each
time the move or the drain progresses, until it is done or ``--timeout-s`` passes (exit 1;
the request stays, the controller goes on). ``undrain`` ends a drain (what moved stays).

``status`` reads the keyspace once, straight from etcd (no node needs to be up: a cluster whose
nodes are all down still shows which nodes its shards name), through ``controller/status.py``:
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
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .common import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, print_error

CLUSTER_ENV: Final = "STREAMD_CLUSTER"
CLUSTER_DEFAULT: Final = "etcd://127.0.0.1:2379"
REQUEST_TIMEOUT_S: Final = 3.0
WAIT_TIMEOUT_S_DEFAULT: Final = 600.0
POLL_S: Final = 0.5


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
    _add_cluster_flags(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=_status)
    move = actions.add_parser(
        "move-replica",
        help="move one shard's replica from a node to another (copies its log)",
        description="Ask the controller to replace the shard's replica on --from by a new one "
        "on --to: the new replica catches up from the leader, then votes; the leader moves "
        "if --from led. Progress is shown until done.",
    )
    move.add_argument("stream")
    move.add_argument("shard_id", metavar="SHARD_ID")
    move.add_argument("--from", dest="from_node", required=True, metavar="NODE")
    move.add_argument("--to", dest="to_node", required=True, metavar="NODE")
    _add_wait_flags(move)
    move.set_defaults(handler=_move_replica)
    drain = actions.add_parser(
        "drain",
        help="move every replica off a node (before taking it out)",
        description="Mark the node draining: the controller moves its leaderships and "
        "replicas to other live nodes (one change per shard, a few shards at a time) and "
        "places no new shard on it. Progress is shown until no replica is left on it.",
    )
    drain.add_argument("node", metavar="NODE")
    _add_wait_flags(drain)
    drain.set_defaults(handler=_drain)
    undrain = actions.add_parser(
        "undrain",
        help="end a node's drain (what has moved stays where it is)",
        description="Delete the node's drain mark: new shards may be placed on it again.",
    )
    undrain.add_argument("node", metavar="NODE")
    _add_cluster_flags(undrain)
    undrain.set_defaults(handler=_undrain)


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="etcd://HOST:PORT[,...]",
        help=f"the cluster's etcd (default ${CLUSTER_ENV}, else {CLUSTER_DEFAULT})",
    )
    parser.add_argument(
        "--cluster-namespace",
        default="streamd/",
        metavar="NS",
        help="the cluster's etcd key prefix, as given to serve (default streamd/)",
    )


def _add_wait_flags(parser: argparse.ArgumentParser) -> None:
    _add_cluster_flags(parser)
    parser.add_argument("--no-wait", action="store_true", help="write the request and return")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=WAIT_TIMEOUT_S_DEFAULT,
        metavar="S",
        help=f"give up waiting after S seconds (default {WAIT_TIMEOUT_S_DEFAULT:.0f})",
    )


class _Refused(Exception):
    """A request the command itself refuses (exit 2) or cannot finish (exit 1)."""

    def __init__(self, message: str, exit_status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def _cluster_url(args: argparse.Namespace) -> tuple[str, str]:
    """The etcd URL to use and where it came from."""
    if args.cluster is not None:
        return args.cluster, "--cluster"
    if os.environ.get(CLUSTER_ENV):
        return os.environ[CLUSTER_ENV], f"${CLUSTER_ENV}"
    return CLUSTER_DEFAULT, "the default"


def _run_on_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(store)`` against the cluster's etcd; an int is an exit status to return."""
    import anyio
    import structlog

    from streamd_client.errors import MetadataUnavailableError

    from .. import log
    from ..config import parse_cluster_url
    from ..meta.errors import MetaError
    from ..meta.etcd import EtcdMetaStore

    url, source = _cluster_url(args)
    try:
        endpoints = parse_cluster_url(url)
    except ValueError as exc:
        print_error(f"{source}: {exc}")
        return EXIT_USAGE
    if not args.cluster_namespace.endswith("/"):
        print_error(f"--cluster-namespace {args.cluster_namespace!r}: must end in '/'")
        return EXIT_USAGE

    async def connected() -> Any:
        store = await EtcdMetaStore.connect(
            endpoints, namespace=args.cluster_namespace, request_timeout_s=REQUEST_TIMEOUT_S
        )
        try:
            return await work(store)
        finally:
            await store.aclose()

    saved_logging = structlog.get_config()
    log.configure("console", "error")  # the etcd client's retries are not this command's output
    try:
        return anyio.run(connected, backend="trio")
    except MetadataUnavailableError as exc:
        print_error(
            f"etcd at {url} is unreachable or did not answer in time: {exc.message} "
            f"(is the cluster's etcd running? `streamd dev cluster` starts one)"
        )
        return EXIT_UNREACHABLE
    except MetaError as exc:
        print_error(f"etcd at {url} refused the request: {exc}")
        return EXIT_ERROR
    except _Refused as exc:
        print_error(str(exc))
        return exc.exit_status
    finally:  # as it was: main() may run in a process that logs on (tests, scripts)
        structlog.configure(**saved_logging)


def _status(args: argparse.Namespace) -> int:
    from ..controller.status import read_status

    async def read(store: Any) -> Any:
        return await read_status(store, request_timeout_s=REQUEST_TIMEOUT_S)

    status = _run_on_store(args, read)
    if isinstance(status, int):
        return status
    if args.json:
        print(json.dumps(dataclasses.asdict(status), sort_keys=True))
        return EXIT_OK
    from ..controller.status import render

    print(render(status))
    if status.cluster_id is None and not status.nodes:
        print(
            f"(nothing under namespace {args.cluster_namespace!r} in {_cluster_url(args)[0]} "
            "yet: no node has "
            "joined, or the cluster uses another --cluster-namespace)"
        )
    return EXIT_OK


async def _get(store: Any, key: str) -> Any:
    import trio

    with trio.fail_after(REQUEST_TIMEOUT_S * 2):
        return await store.get(key)


async def _shard_docs(store: Any) -> list[Any]:
    import trio

    from ..meta.keys import SHARDS_PREFIX, ShardAssignment

    with trio.fail_after(REQUEST_TIMEOUT_S * 2):
        kvs = await store.range(SHARDS_PREFIX)
    return [ShardAssignment.decode(kv.value) for kv in kvs]


def _move_replica(args: argparse.Namespace) -> int:
    import trio

    from ..meta.keys import MoveRequest, ShardAssignment, node_key, shard_key

    async def move(store: Any) -> int:
        try:
            request = MoveRequest(args.stream, args.shard_id, args.from_node, args.to_node)
            key = shard_key(args.stream, args.shard_id)
        except ValueError as exc:
            raise _Refused(str(exc), EXIT_USAGE) from None
        kv = await _get(store, key)
        if kv is None:
            raise _Refused(f"no shard {args.shard_id} of stream {args.stream!r} in the cluster")
        before = ShardAssignment.decode(kv.value)
        if request.from_node not in before.replicas:
            raise _Refused(f"{request.from_node} holds no replica of it ({list(before.replicas)})")
        if request.to_node in before.replicas:
            raise _Refused(f"{request.to_node} holds one already ({list(before.replicas)})")
        if await _get(store, node_key(request.to_node)) is None:
            raise _Refused(f"node {request.to_node} is not live")
        with trio.fail_after(REQUEST_TIMEOUT_S * 2):
            await store.txn([], puts=[(request.key, request.encode())])
        line = f"move {args.stream}/{args.shard_id}: {request.from_node} -> {request.to_node}"
        print(f"{line}: requested", flush=True)
        if args.no_wait:
            return EXIT_OK
        shown = ""
        with trio.move_on_after(args.timeout_s):
            while True:
                kv = await _get(store, key)
                doc = None if kv is None else ShardAssignment.decode(kv.value)
                if doc is None:
                    raise _Refused(f"{line}: the shard is gone")
                if request.to_node in doc.voters:
                    print(f"{line}: done, replicas {list(doc.replicas)}, leader {doc.leader}")
                    return EXIT_OK
                pending = await _get(store, request.key)
                if request.to_node in doc.joining:
                    state = (
                        f"joining (catching up from leader {doc.leader}, term {doc.leader_epoch})"
                    )
                elif pending is None:
                    raise _Refused(f"{line}: the controller refused it (see its log)")
                else:
                    state = "waiting: the other replicas must be live, no other change under way"
                if state != shown:
                    print(f"{line}: {state}", flush=True)
                    shown = state
                await trio.sleep(POLL_S)
        raise _Refused(f"{line}: not done after {args.timeout_s:g} s (the request stays)")

    return int(_run_on_store(args, move))


def _drain(args: argparse.Namespace) -> int:
    import trio

    from ..meta.keys import drain_key

    async def drain(store: Any) -> int:
        try:
            key = drain_key(args.node)
        except ValueError as exc:
            raise _Refused(str(exc), EXIT_USAGE) from None
        with trio.fail_after(REQUEST_TIMEOUT_S * 2):
            await store.txn([], puts=[(key, json.dumps({"v": 1, "node": args.node}).encode())])
        held = [d for d in await _shard_docs(store) if args.node in d.replicas]
        print(f"drain {args.node}: started, {len(held)} replica(s) on it", flush=True)
        if args.no_wait:
            return EXIT_OK
        total, shown = len(held), ""
        with trio.move_on_after(args.timeout_s):
            while True:
                docs = await _shard_docs(store)
                left = [d for d in docs if args.node in d.replicas]
                joining = sum(1 for d in docs if d.joining)
                leads = sum(1 for d in left if d.leader == args.node)
                if not left and not joining:
                    print(f"drain {args.node}: done, {total} replica(s) moved off it")
                    return EXIT_OK
                state = (
                    f"{total - len(left)} of {total} moved, {len(left)} left ({leads} led), "
                    f"{joining} catching up"
                )
                if state != shown:
                    print(f"drain {args.node}: {state}", flush=True)
                    shown = state
                await trio.sleep(POLL_S)
        raise _Refused(
            f"drain {args.node}: not done after {args.timeout_s:g} s (it goes on; a shard "
            "whose replication factor equals the live nodes has nowhere to go)"
        )

    return int(_run_on_store(args, drain))


def _undrain(args: argparse.Namespace) -> int:
    import trio

    from ..meta.keys import drain_key

    async def undrain(store: Any) -> int:
        try:
            key = drain_key(args.node)
        except ValueError as exc:
            raise _Refused(str(exc), EXIT_USAGE) from None
        with trio.fail_after(REQUEST_TIMEOUT_S * 2):
            await store.txn([], deletes=[key])
        print(f"drain {args.node}: ended")
        return EXIT_OK

    return int(_run_on_store(args, undrain))
