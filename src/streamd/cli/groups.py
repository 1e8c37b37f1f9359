"""The ``streamd group ...`` commands (registered into the CLI by ``register``).

    streamd group consume STREAM GROUP [--json] [--from trim-horizon|latest|ts:ISO8601]
                          [--checkpoint-every N] [--checkpoint-interval-s T] [--limit N]
                          [--session-timeout-ms MS]
    streamd group list STREAM [--json]
    streamd group describe STREAM GROUP [--json]
    streamd group reset STREAM GROUP --to trim-horizon|latest|ts:ISO8601 [--force]
    streamd group delete STREAM GROUP [--force]

``consume`` is the console consumer of a group: one group worker (streamd_client.group) that
prints every record it processes (``--json``: the object ``streamd read --json`` prints, plus
``lease_epoch``), flushes, and only then counts the batch as processed, so an automatic
checkpoint never covers a record that was not printed. SIGINT/SIGTERM (or ``--limit``) shut it
down gracefully: in-flight batches finish, checkpoints are stored, the worker leaves the group
and its shards move to the other workers at once.

Exit statuses are the CLI's (common.py): 0 ok, 1 typed error, 2 usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    add_endpoint,
    connect,
    iso_time,
    parse_timestamp_ms,
    run_client_command,
)
from .lines import plain_line, record_document


def register(commands: Any) -> None:
    """Add the ``group`` command and its actions to the CLI's subparsers."""

    group = commands.add_parser("group", help="consumer groups: consume, list, describe, reset")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    consume = actions.add_parser("consume", help="run one group worker, print what it processes")
    consume.add_argument("stream", metavar="STREAM")
    consume.add_argument("group", metavar="GROUP")
    consume.add_argument("--json", action="store_true", help="one JSON object per record")
    consume.add_argument(
        "--from",
        dest="start",
        default="trim-horizon",
        metavar="POS",
        help="where a new group starts: trim-horizon (default), latest, ts:ISO8601",
    )
    consume.add_argument(
        "--checkpoint-every", type=int, default=100, metavar="N", help="records (default 100)"
    )
    consume.add_argument(
        "--checkpoint-interval-s", type=float, default=1.0, metavar="T", help="default 1.0"
    )
    consume.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N")
    consume.add_argument("--session-timeout-ms", type=int, default=3000, metavar="MS")
    consume.add_argument(
        "--deaggregate",
        action="store_true",
        help="unpack KPL-aggregated records; checkpoints may point inside an aggregate",
    )
    consume.set_defaults(run=_consume)

    listing = actions.add_parser("list", help="list a stream's groups")
    listing.add_argument("stream", metavar="STREAM")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    describe = actions.add_parser("describe", help="members, leases, checkpoints, lag")
    describe.add_argument("stream", metavar="STREAM")
    describe.add_argument("group", metavar="GROUP")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.set_defaults(run=_describe)

    reset = actions.add_parser("reset", help="forget checkpoints; start again from --to")
    reset.add_argument("stream", metavar="STREAM")
    reset.add_argument("group", metavar="GROUP")
    reset.add_argument("--to", required=True, metavar="POS", help="trim-horizon, latest, ts:ISO")
    reset.add_argument("--force", action="store_true", help="even with active members")
    reset.set_defaults(run=_reset)

    delete = actions.add_parser("delete", help="remove a group and its checkpoints")
    delete.add_argument("stream", metavar="STREAM")
    delete.add_argument("group", metavar="GROUP")
    delete.add_argument("--force", action="store_true", help="even with active members")
    delete.set_defaults(run=_delete)

    for sub in (consume, listing, describe, reset, delete):
        add_endpoint(sub)
        sub.set_defaults(handler=run_client_command)


def parse_group_position(text: str) -> Any:
    """``--from``/``--to`` -> Position (trim-horizon, latest, ts:ISO8601). Raises CliError."""
    from streamd_client import Position

    if text == "trim-horizon":
        return Position.trim_horizon()
    if text == "latest":
        return Position.latest()
    if text.startswith("ts:") and len(text) > 3:
        return Position.at_timestamp(parse_timestamp_ms(text[3:]))
    raise CliError(f"{text!r}: expected trim-horizon, latest or ts:ISO8601")


async def _consume(args: argparse.Namespace) -> int:
    import anyio

    from streamd_client.group import GroupWorker

    if args.checkpoint_every < 1 or args.checkpoint_interval_s <= 0:
        raise CliError("--checkpoint-every must be >= 1 and --checkpoint-interval-s > 0")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    initial = parse_group_position(args.start)
    out = sys.stdout.buffer
    printed = 0
    async with connect(args) as client, anyio.create_task_group() as signals_group:
        worker = GroupWorker(
            client,
            args.stream,
            args.group,
            initial=initial,
            checkpoint_every_records=args.checkpoint_every,
            checkpoint_every_s=args.checkpoint_interval_s,
            session_timeout_ms=args.session_timeout_ms,
            deaggregate=args.deaggregate,
        )
        signals_group.start_soon(_stop_on_signal, worker)
        async with worker:
            async for batch in worker:
                records = batch.records
                if args.limit is not None:
                    records = records[: args.limit - printed]
                _write(out, records, batch.epoch, args.json)
                printed += len(records)
                if args.limit is not None and printed >= args.limit:
                    if records:  # exactly what was printed, even if the batch was cut
                        await batch.checkpointer.checkpoint(records[-1])
                    break
        signals_group.cancel_scope.cancel()
    return EXIT_OK


async def _stop_on_signal(worker: Any) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _ in received:
            worker.request_shutdown()
            return


def _write(out: Any, records: list[Any], epoch: int, as_json: bool) -> None:

    if as_json:
        lines = [json.dumps({**record_document(r), "lease_epoch": epoch}) for r in records]
        out.write("".join(line + "\n" for line in lines).encode())
    else:  # text, or base64 for data that is not (as streamd read prints it)
        out.write(b"".join(plain_line(r.data) for r in records))
    out.flush()


async def _list(args: argparse.Namespace) -> int:
    from streamd_client import group_admin

    async with connect(args) as client:
        groups = await group_admin.list_groups(client, args.stream)
    if args.json:
        print(json.dumps(groups, indent=2))
        return EXIT_OK
    for g in groups:
        print(
            f"{g.get('group')}  {g.get('state')}  members={g.get('members')}  "
            f"shards={g.get('shards')}"
        )
    return EXIT_OK


async def _describe(args: argparse.Namespace) -> int:
    from streamd_client import group_admin

    async with connect(args) as client:
        view = await group_admin.describe_group(client, args.stream, args.group)
    if args.json:
        print(json.dumps(view, indent=2))
        return EXIT_OK
    print(f"group     {view['stream']}/{view['group']}  ({view['state']})")
    print(f"created   {iso_time(view['created_ms'])}  initial={view['initial']['type']}")
    print(f"members   {len(view['members'])}")
    for m in view["members"]:
        print(
            f"  {m['member_id']}  {m['client']}  leases={len(m['leases'])}  "
            f"last heartbeat {m['last_heartbeat_ms_ago']} ms ago"
        )
    print("shards")
    print(
        f"  {'shard':<22} {'status':<20} {'owner':<18} {'epoch':>5} {'lag':>9} {'lag_ms':>8}"
        "  checkpoint"
    )
    for s in view["shards"]:
        lag = "-" if s.get("lag_records") is None else str(s["lag_records"])
        lag_ms = "-" if s.get("lag_ms") is None else str(s["lag_ms"])
        print(
            f"  {s['shard_id']:<22} {s['status']:<20} {s['owner'] or '-':<18} {s['epoch']:>5} "
            f"{lag:>9} {lag_ms:>8}  {s['checkpoint'] or '-'}"
        )
    return EXIT_OK


async def _reset(args: argparse.Namespace) -> int:
    from streamd_client import group_admin

    to = parse_group_position(args.to)
    async with connect(args) as client:
        await group_admin.reset_group(client, args.stream, args.group, to, force=args.force)
    print(f"group {args.stream}/{args.group} reset to {args.to}", file=sys.stderr)
    return EXIT_OK


async def _delete(args: argparse.Namespace) -> int:
    from streamd_client import group_admin

    async with connect(args) as client:
        await group_admin.delete_group(client, args.stream, args.group, force=args.force)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamd.cli.groups group ...``: the group commands alone (until the CLI
    registers them, and for tests that need a worker process)."""

    parser = argparse.ArgumentParser(prog="streamd")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
