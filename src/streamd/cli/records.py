"""``streamd put`` and ``streamd read``: records from stdin lines, records to stdout lines.

How a line becomes a record and a record a line is lines.py's (shared with ``group consume``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import IO, Any, Final

from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    CliError,
    UsageError,
    add_endpoint,
    connect,
    parse_position,
    print_error,
    run_client_command,
)
from .lines import (
    MissingKeyError,
    RecordInputError,
    parse_put_line,
    plain_line,
    record_document,
)

_STDIN_CHUNK_BYTES: Final = 256 * 1024
_PENDING_WINDOW_MAX: Final = 200_000  # put: acks awaited in order once this many are pending
_FAILURE_EXAMPLES_MAX: Final = 5


def register(commands: Any) -> None:
    """Add ``streamd put`` and ``streamd read``."""
    _add_put(commands)
    _add_read(commands)


def _add_put(commands: Any) -> None:
    put = commands.add_parser("put", help="put one record per line of stdin")
    put.add_argument("name", metavar="STREAM")
    keys = put.add_mutually_exclusive_group()
    keys.add_argument(
        "--partition-key", default=None, metavar="K", help="the key of every record (or line)"
    )
    keys.add_argument(
        "--random-key",
        action="store_true",
        help="a random key per record (lines without one, with --json)",
    )
    put.add_argument(
        "--json",
        action="store_true",
        help='lines are {"partition_key": str, "data": str[, "encoding": "base64"|"hex"]}',
    )
    add_endpoint(put)
    put.set_defaults(handler=run_client_command, run=_put)


def _add_read(commands: Any) -> None:
    read = commands.add_parser("read", help="print records (all shards unless --shard)")
    read.add_argument("name", metavar="STREAM")
    read.add_argument("--shard", default=None, metavar="ID", help="e.g. shardId-000000000000")
    read.add_argument(
        "--from",
        dest="start",
        default="trim-horizon",
        metavar="POS",
        help="trim-horizon (default), latest, at:SEQ, after:SEQ, or ts:ISO8601",
    )
    read.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N")
    read.add_argument("--follow", action="store_true", help="keep waiting for new records")
    read.add_argument(
        "--deaggregate",
        action="store_true",
        help="unpack KPL-aggregated records into their user records (sub_sequence in --json)",
    )
    form = read.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object per record")
    form.add_argument(
        "--raw", action="store_true", help="the data bytes as stored, binary too (for pipes)"
    )
    read.add_argument(
        "--binary",
        choices=["base64", "hex"],
        default=None,
        help="how data that is not text is printed (default base64; also in --json)",
    )
    add_endpoint(read)
    read.set_defaults(handler=run_client_command, run=_read)


class _PutTally:
    """Counts and the first few failures of a ``put`` run, grouped by error code."""

    def __init__(self) -> None:
        self.records = 0
        self.acked = 0
        self.failed = 0
        self.failures_by_code: dict[str, int] = {}
        self.examples: list[str] = []

    def fail(self, line_number: int, code: str, message: str) -> None:
        self.failed += 1
        self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1
        if len(self.examples) < _FAILURE_EXAMPLES_MAX:
            self.examples.append(f"line {line_number}: {code}: {message}")


def split_lines(carry: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Whole lines in ``carry + chunk`` (newline dropped) and the unfinished rest."""
    lines = (carry + chunk).split(b"\n")
    return lines[:-1], lines[-1]


async def _put(args: argparse.Namespace) -> int:
    import anyio

    from streamd_client import errors

    _check_put_keys(args)
    tally = _PutTally()
    stdin = sys.stdin.fileno()
    async with connect(args) as client, client.producer(args.name) as producer:
        window: deque[tuple[int, Any]] = deque()

        async def settle(line_number: int, pending: Any) -> None:
            try:
                await pending.result()
            except errors.StreamdError as exc:
                tally.fail(line_number, exc.code, exc.message)
            else:
                tally.acked += 1

        async def put_line(line: bytes) -> None:
            tally.records += 1
            try:
                data, key = parse_put_line(line, args.json, args.partition_key, args.random_key)
                window.append((tally.records, await producer.put(data, key)))
            except errors.StreamdError as exc:  # invalid record: nothing sent
                tally.fail(tally.records, exc.code, exc.message)
            except MissingKeyError as exc:
                tally.fail(tally.records, errors.InvalidPartitionKeyError.code, str(exc))
            except RecordInputError as exc:
                tally.fail(tally.records, "INVALID_INPUT", str(exc))

        carry = b""
        while chunk := await anyio.to_thread.run_sync(_read_some, stdin, abandon_on_cancel=True):
            lines, carry = split_lines(carry, chunk)
            for line in lines:
                if args.json and not line.strip():
                    continue
                await put_line(line)
            while window and (window[0][1].done() or len(window) > _PENDING_WINDOW_MAX):
                await settle(*window.popleft())
        if carry and not (args.json and not carry.strip()):
            await put_line(carry)
        await producer.flush()
        while window:
            await settle(*window.popleft())
    for example in tally.examples:
        print_error(example)
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(tally.failures_by_code.items()))
    print(
        f"put {tally.records} record(s): {tally.acked} acknowledged, {tally.failed} failed"
        + (f" ({codes})" if codes else "")
    )
    return EXIT_PARTIAL if tally.failed else EXIT_OK


def _check_put_keys(args: argparse.Namespace) -> None:
    """Plain lines need a key from the command line; an empty one is Kinesis's error, and a
    random one must be asked for. Raises UsageError (before any record is read)."""
    if args.partition_key == "":
        raise UsageError(
            "--partition-key must not be empty (Kinesis refuses empty keys); "
            "--random-key gives each record a random one"
        )
    if not args.json and args.partition_key is None and not args.random_key:
        raise UsageError(
            "put needs a partition key: --partition-key K (every line), or --random-key "
            "(a random key per line, which spreads records over the shards)"
        )


def _read_some(fd: int) -> bytes:
    """Up to a chunk of whatever stdin has now (blocks only until some bytes arrive).

    A raw ``os.read``, not ``sys.stdin.buffer``: on Ctrl-C the thread blocked here is abandoned,
    and a BufferedReader's lock held by it would make interpreter shutdown abort.
    """
    return os.read(fd, _STDIN_CHUNK_BYTES)


def _shard_to_read(args: argparse.Namespace, description: Any, position: Any) -> str:
    """The one shard ``--shard`` names, or the one a sequence-number position names."""
    from streamd_client.model import parse_sequence, shard_id_of

    if args.shard is not None:
        if args.shard not in {shard.shard_id for shard in description.shards}:
            raise CliError(f"stream {args.name!r} has no shard {args.shard!r}")
        return str(args.shard)
    assert position.sequence is not None
    return shard_id_of(parse_sequence(position.sequence)[0])


async def _read(args: argparse.Namespace) -> int:
    """All shards: a lineage-ordered stream reader (children only after their parents' ends).
    One shard (``--shard``, or a sequence-number position): that shard, to its end if closed."""
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.raw and args.binary is not None:
        raise UsageError("--binary does not go with --raw (the bytes are printed as they are)")
    position = parse_position(args.start)
    out = sys.stdout.buffer
    printed = 0
    async with connect(args) as client, AsyncExitStack() as stack:
        reader: Any
        if args.shard is None and position.sequence is None:
            reader = client.stream_reader(
                args.name, position, follow=args.follow, deaggregate=args.deaggregate
            )
            await stack.enter_async_context(reader)
        else:
            description = await client.describe_stream(args.name)
            shard_id = _shard_to_read(args, description, position)
            reader = client.reader(
                args.name, shard_id, position, follow=args.follow, deaggregate=args.deaggregate
            )
        while (page := await reader.read_page()) is not None:
            if args.limit is not None:
                page = page[: args.limit - printed]
            printed += len(page)
            _write_records(out, page, args)
            out.flush()
            if args.limit is not None and printed >= args.limit:
                break
        if getattr(reader, "shard_end", False):
            children = ", ".join(c.shard_id for c in reader.child_shards)
            print(
                f"{reader.shard_id} has ended (resharded); continued by {children}", file=sys.stderr
            )
    return EXIT_OK


def _write_records(out: IO[bytes], records: Sequence[Any], args: argparse.Namespace) -> None:
    """One line per record: plain, --json or --raw (lines.py)."""
    binary = args.binary or "base64"
    if args.json:
        lines = [json.dumps(record_document(r, binary)).encode() + b"\n" for r in records]
    elif args.raw:
        lines = [r.data + b"\n" for r in records]
    else:
        lines = [plain_line(r.data, binary) for r in records]
    out.write(b"".join(lines))
