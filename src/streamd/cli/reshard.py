"""The resharding commands (registered by app.py; ``stream describe``'s lineage is streams.py's).

    streamd shard split STREAM SHARD_ID [--at HASH_KEY]
    streamd shard merge STREAM SHARD_ID ADJACENT_SHARD_ID
    streamd stream resize STREAM --shards N [--no-wait] [--timeout-s T]

``split`` and ``merge`` return once the parents are closed and the children open (the server
does them synchronously). ``resize`` starts a uniform resize (Kinesis's UpdateShardCount) and,
unless ``--no-wait``, polls ``describe_stream`` and prints a line each time the progress moves
(``resize orders: 3/7 operations done, 6 open shards``) until the stream is ACTIVE again.

Exit statuses are the CLI's (common.py): 0 ok, 1 typed error, 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from streamd_client.model import SHARD_COUNT_MAX

from .common import EXIT_OK, add_endpoint, connect, run_client_command

RESIZE_TIMEOUT_S_DEFAULT: Final = 600.0


def register(commands: Any, stream_actions: Any) -> None:
    """Add ``streamd shard split|merge`` to the CLI's subparsers, ``resize`` to ``stream``'s."""
    resize = add_resize(stream_actions)
    add_endpoint(resize)
    resize.set_defaults(handler=run_client_command)

    shard = commands.add_parser("shard", help="split or merge shards (resharding)")
    actions = shard.add_subparsers(dest="action", required=True, metavar="ACTION")

    split = actions.add_parser("split", help="split an open shard into two")
    split.add_argument("name", metavar="STREAM")
    split.add_argument("shard_id", metavar="SHARD_ID")
    split.add_argument(
        "--at",
        default=None,
        metavar="HASH_KEY",
        help="first hash key (decimal) of the right child (default: the range's middle)",
    )
    split.set_defaults(run=_split)

    merge = actions.add_parser("merge", help="merge two open shards with adjacent ranges")
    merge.add_argument("name", metavar="STREAM")
    merge.add_argument("shard_id", metavar="SHARD_ID")
    merge.add_argument("adjacent_shard_id", metavar="ADJACENT_SHARD_ID")
    merge.set_defaults(run=_merge)

    for sub in (split, merge):
        add_endpoint(sub)
        sub.set_defaults(handler=run_client_command)


def add_resize(actions: Any) -> argparse.ArgumentParser:
    """Add ``streamd stream resize`` to the ``stream`` actions; returns its parser."""
    resize = actions.add_parser("resize", help="resize to N open shards (uniform scaling)")
    resize.add_argument("name", metavar="STREAM")
    resize.add_argument("--shards", type=int, required=True, metavar="N")
    resize.add_argument("--no-wait", action="store_true", help="return once it has started")
    resize.add_argument(
        "--timeout-s",
        type=float,
        default=RESIZE_TIMEOUT_S_DEFAULT,
        metavar="T",
        help=f"give up waiting after T seconds (default {RESIZE_TIMEOUT_S_DEFAULT:.0f})",
    )
    resize.set_defaults(run=_resize)
    parser: argparse.ArgumentParser = resize
    return parser


async def _split(args: argparse.Namespace) -> int:

    async with connect(args) as client:
        left, right = await client.split_shard(args.name, args.shard_id, args.at)
    print(f"split {args.shard_id} of {args.name} into {left} and {right}")
    return EXIT_OK


async def _merge(args: argparse.Namespace) -> int:

    async with connect(args) as client:
        child = await client.merge_shards(args.name, args.shard_id, args.adjacent_shard_id)
    print(f"merged {args.shard_id} and {args.adjacent_shard_id} of {args.name} into {child}")
    return EXIT_OK


async def _resize(args: argparse.Namespace) -> int:

    async with connect(args) as client:
        current = len((await client.describe_stream(args.name)).open_shards)
        steps = resize_hops(current, args.shards)
        if len(steps) > 1:
            route = " -> ".join(map(str, [current, *steps]))
            print(f"resize {args.name}: {route} (one call goes at most to half or double)")
        for step in steps:
            operations = await client.resize_stream(args.name, step)
            print(f"resize {args.name}: started, {operations} operation(s) to {step} shards")
            sys.stdout.flush()
            if args.no_wait:
                if step != args.shards:
                    print(f"resize {args.name}: --no-wait: run it again for the next hop")
                return EXIT_OK

            def report(description: Any) -> None:
                if description.reshard is not None:  # the ACTIVE end gets the "done" line
                    print(progress_line(args.name, description), flush=True)

            final = await client.wait_for_active(args.name, args.timeout_s, on_progress=report)
            print(f"resize {args.name}: done, {len(final.open_shards)} open shards")
    return EXIT_OK


def resize_hops(current: int, target: int) -> list[int]:
    """The shard counts a resize from ``current`` to ``target`` passes through, one call
    each: Kinesis's bounds allow at most double or half (rounded up) per call."""
    hops: list[int] = []
    if not 1 <= target <= SHARD_COUNT_MAX:
        return [target]  # the server says what is wrong with it
    while not (current + 1) // 2 <= target <= 2 * current:
        current = 2 * current if target > current else (current + 1) // 2
        hops.append(current)
    return [*hops, target]


def progress_line(name: str, description: Any) -> str:
    """``resize orders: 3/7 operations done, 6 open shards`` (or the stream's status)."""
    open_count = len(description.open_shards)
    reshard = description.reshard
    if reshard is None:
        return f"resize {name}: {description.status}, {open_count} open shards"
    return (
        f"{reshard.kind} {name}: {reshard.done}/{reshard.total} operations done, "
        f"{open_count} open shards"
    )
