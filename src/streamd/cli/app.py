"""The ``streamd`` command: run a server, manage streams, put and read records, benchmark.

    streamd serve [--data-dir D] [--listen HOST:PORT] [--fsync always|interval|never]
                  [--log-format console|json] [--log-level LEVEL] [--metrics-listen HOST:PORT]
                  [--kinesis-listen HOST:PORT|off] [--kinesis-region R]
                  [--kinesis-access-key K (secret in $STREAMD_KINESIS_SECRET_KEY)]
                  [--kinesis-credentials FILE] [--connections-max N]
                  [--connections-per-address-max N] [--handshake-timeout-s S]
                  [--idle-timeout-s S] [--kinesis-idle-timeout-s S]
    streamd stream create NAME --shards N [--retention-hours H]
    streamd stream list | describe NAME [--json] | delete NAME | retention NAME --hours H
    streamd stream resize NAME --shards N [--no-wait]      (see streamd/cli_reshard.py)
    streamd shard split NAME SHARD_ID [--at HASH_KEY] | merge NAME SHARD_ID ADJACENT_SHARD_ID
    streamd put NAME (--partition-key K | --random-key) [--json]   (a record per stdin line)
    streamd read NAME [--shard ID] [--from POS] [--limit N] [--follow] [--json | --raw]
                 [--binary base64|hex]                 (see streamd/cli_records.py)
    streamd --version
    streamd bench produce|consume [--json] ...              (see streamd/bench.py)
    streamd group consume|list|describe|reset|delete ...    (see streamd/cli_groups.py)
    streamd admin quarantine-range NAME SHARD_ID --from SEQ --to SEQ (see streamd/cli_admin.py)

Client commands take ``--endpoint HOST:PORT``, before or after the command (default:
$STREAMD_ENDPOINT, else 127.0.0.1:7070; see streamd/cli_endpoint.py), and run the async client
(streamd_client) on trio; the server is imported only by ``serve``, so client commands start
fast.

Exit status (stable, for scripts):

| code | meaning                                                                      |
|------|------------------------------------------------------------------------------|
| 0    | success                                                                      |
| 1    | the request failed with a typed error (``error: CODE: message`` on stderr)   |
| 2    | bad command line; ``serve``: the server could not start (streamd/startup.py)  |
| 3    | the server could not be reached, or the connection broke or timed out       |
| 4    | ``put``: some records failed (the counts say how many; the rest are stored) |
| 130  | interrupted (Ctrl-C)                                                         |

Expected errors never print a traceback; anything else is a bug and does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from .. import __version__
from . import endpoint as cli_endpoint
from .records import iso_time, plain_line, record_document

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_PARTIAL: Final = 4
EXIT_INTERRUPTED: Final = 130

ENDPOINT_ENV: Final = cli_endpoint.ENDPOINT_ENV
ENDPOINT_DEFAULT: Final = cli_endpoint.ENDPOINT_DEFAULT
_STDIN_CHUNK_BYTES: Final = 256 * 1024
_PENDING_WINDOW_MAX: Final = 200_000  # put: acks awaited in order once this many are pending
_FAILURE_EXAMPLES_MAX: Final = 5

AsyncCommand = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class CliError(Exception):
    """A user-facing failure that is not a server error (bad --from, malformed JSON input)."""


class UsageError(CliError):
    """A command line that cannot work, found after parsing (exit 2, like argparse's)."""


# -- parsing -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamd",
        description="streamd: a durable, sharded, Kinesis-style log service.",
    )
    parser.add_argument("--version", action="version", version=f"streamd {__version__}")
    cli_endpoint.add_global(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_stream(commands)
    _add_put(commands)
    _add_read(commands)
    from ..bench import native as bench
    from . import groups as cli_groups
    from . import reshard as cli_reshard

    bench.add_parser(commands, _add_endpoint)
    cli_groups.register(commands)  # streamd group ...: uses _add_endpoint, _run_client_command
    cli_reshard.register_shard(commands)  # streamd shard split|merge
    from . import cli_admin

    cli_admin.register(commands)  # streamd admin quarantine-range
    return parser


def _add_endpoint(parser: argparse.ArgumentParser) -> None:
    cli_endpoint.add_to(parser)  # also before the command; then $STREAMD_ENDPOINT, the default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` runs it, ``endpoint`` resolved (streamd/cli_endpoint.py)."""
    args = build_parser().parse_args(argv)
    cli_endpoint.resolve(args)
    return args


def _add_serve(commands: Any) -> None:
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
        type=_positive_int,
        default=defaults.shards_max,
        metavar="N",
        help="shards this node may hold (default %(default)s; the open-files limit may allow "
        "fewer)",
    )
    serve.add_argument(
        "--segment-fds-max",
        type=_positive_int,
        default=defaults.segment_fds_max,
        metavar="N",
        help="segment files kept open at once (default %(default)s)",
    )
    serve.add_argument(
        "--io-threads-max",
        type=_positive_int,
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
        "--connections-max", type=_positive_int, default=1024, metavar="N",
        help="open connections per listener (native, Kinesis); more are refused (default 1024)",
    )  # fmt: skip
    serve.add_argument(
        "--connections-per-address-max", type=_positive_int, default=None, metavar="N",
        help="open connections from one client address (default: a quarter of --connections-max)",
    )  # fmt: skip
    serve.add_argument(
        "--handshake-timeout-s", type=_positive_float, default=10.0, metavar="S",
        help="a new connection's time to send its hello (Kinesis: its first request; default 10)",
    )  # fmt: skip
    serve.add_argument(
        "--idle-timeout-s", type=_positive_float, default=600.0, metavar="S",
        help="close a native connection with no request in flight for S seconds (default 600)",
    )  # fmt: skip
    serve.add_argument(
        "--kinesis-idle-timeout-s", type=_positive_float, default=120.0, metavar="S",
        help="close an idle Kinesis keep-alive connection after S seconds (default 120)",
    )  # fmt: skip


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


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


def _add_stream(commands: Any) -> None:
    stream = commands.add_parser("stream", help="create, list, describe, delete streams")
    actions = stream.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a stream")
    create.add_argument("name")
    create.add_argument("--shards", type=int, required=True, metavar="N")
    create.add_argument("--retention-hours", type=int, default=24, metavar="H")
    create.set_defaults(run=_stream_create)

    listing = actions.add_parser("list", help="list streams")
    listing.set_defaults(run=_stream_list)

    describe = actions.add_parser("describe", help="show a stream and its shards")
    describe.add_argument("name")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.set_defaults(run=_stream_describe)

    delete = actions.add_parser("delete", help="delete a stream and all its records")
    delete.add_argument("name")
    delete.set_defaults(run=_stream_delete)

    retention = actions.add_parser("retention", help="change a stream's retention")
    retention.add_argument("name")
    retention.add_argument("--hours", type=int, required=True, metavar="H")
    retention.set_defaults(run=_stream_retention)

    from .reshard import add_resize

    resize = add_resize(actions)

    for sub in (create, listing, describe, delete, retention, resize):
        _add_endpoint(sub)
        sub.set_defaults(handler=_run_client_command)


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
    _add_endpoint(put)
    put.set_defaults(handler=_run_client_command, run=_put)


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
    _add_endpoint(read)
    read.set_defaults(handler=_run_client_command, run=_read)


def parse_position(text: str) -> Any:
    """``--from`` value -> streamd_client.Position. Raises CliError."""
    from streamd_client import Position
    from streamd_client.errors import InvalidSequenceNumberError

    kind, _, value = text.partition(":")
    try:
        if text == "trim-horizon":
            return Position.trim_horizon()
        if text == "latest":
            return Position.latest()
        if kind == "at" and value:
            return Position.at_sequence(value)
        if kind == "after" and value:
            return Position.after_sequence(value)
        if kind == "ts" and value:
            return Position.at_timestamp(parse_timestamp_ms(value))
    except InvalidSequenceNumberError as exc:
        raise CliError(f"--from {text!r}: {exc.message}") from None
    raise CliError(
        f"--from {text!r}: expected trim-horizon, latest, at:SEQ, after:SEQ or ts:ISO8601"
    )


def parse_timestamp_ms(text: str) -> int:
    """ISO 8601 (``2024-05-01T12:00:00Z``; naive means UTC) -> ms since the epoch."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (``streamd read s | head``): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


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


def _run_client_command(args: argparse.Namespace) -> int:
    """Run ``args.run`` on trio and turn expected errors into a message and an exit code."""
    import anyio

    from streamd_client import errors

    command: AsyncCommand = args.run
    try:
        cli_endpoint.check(args)
    except cli_endpoint.EndpointError as bad_endpoint:
        _print_error(str(bad_endpoint))
        return EXIT_USAGE
    try:
        # trio: its worker threads are daemons, so a stdin read abandoned on Ctrl-C cannot hold
        # the process open at exit (asyncio's would).
        return anyio.run(command, args, backend="trio")
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, errors.ConnectionLostError | errors.RequestTimeoutError):
            _print_error(f"{exc.code}: {exc.message} (endpoint {args.endpoint})")
            return EXIT_UNREACHABLE
        if isinstance(exc, errors.StreamdError):
            _print_error(f"{exc.code}: {exc.message}")
            return EXIT_ERROR
        if isinstance(exc, CliError):
            _print_error(str(exc))
            return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        if isinstance(exc, KeyboardInterrupt | BrokenPipeError):
            raise exc from None
        raise


def _leaf(exc: BaseException) -> BaseException:
    """The first meaningful exception inside (possibly nested) exception groups: an
    ``Exception`` rather than a cancellation, which is all a sibling task's failure causes."""
    while isinstance(exc, BaseExceptionGroup):
        inner = list(exc.exceptions)
        exc = ([e for e in inner if isinstance(e, Exception)] or inner)[0]
    return exc


def _print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _connect(args: argparse.Namespace) -> Any:
    from streamd_client import connect

    return connect(args.endpoint, connect_timeout_s=5.0, request_timeout_s=30.0)


# -- stream admin --------------------------------------------------------------------------------


async def _stream_create(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        await client.create_stream(args.name, args.shards, retention_hours=args.retention_hours)
    print(f"created stream {args.name} with {args.shards} shard(s)")
    return EXIT_OK


async def _stream_list(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        names = await client.list_streams()
    for name in names:
        print(name)
    return EXIT_OK


async def _stream_delete(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        await client.delete_stream(args.name)
    print(f"deleted stream {args.name}")
    return EXIT_OK


async def _stream_retention(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        await client.update_retention(args.name, args.hours)
    print(f"stream {args.name}: retention {args.hours} hours")
    return EXIT_OK


async def _stream_describe(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        description = await client.describe_stream(args.name)
    document = describe_document(description)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    from .reshard import lineage_lines

    shards = document["shards"]
    open_count = sum(s["ending_sequence"] is None for s in shards)
    reshard = document["reshard"]
    status = document["status"]
    if reshard is not None:
        status += (
            f" ({reshard['kind']} to {reshard['target']}: "
            f"{reshard['done']}/{reshard['total']} operations done)"
        )
    print(f"stream           {document['name']}")
    print(f"status           {status}")
    print(f"retention_hours  {document['retention_hours']}")
    print(f"created          {document['created_time']}")
    print(f"shards           {len(shards)} ({open_count} open, {len(shards) - open_count} closed)")
    for line in lineage_lines(shards):
        print(line)
    return EXIT_OK


def describe_document(description: Any) -> dict[str, Any]:
    """A StreamDescription as JSON-ready data. Hash keys are decimal strings (as Kinesis's),
    since 128-bit integers do not survive most JSON parsers."""
    return {
        "name": description.name,
        "status": description.status,
        "retention_hours": description.retention_hours,
        "created_ms": description.created_ms,
        "created_time": iso_time(description.created_ms),
        "reshard": None if description.reshard is None else description.reshard._asdict(),
        "shards": [
            {
                "shard_id": shard.shard_id,
                "hash_key_start": str(shard.hash_key_start),
                "hash_key_end": str(shard.hash_key_end),
                "starting_sequence": shard.starting_sequence,
                "ending_sequence": shard.ending_sequence,
                "parent_shard_id": shard.parent_shard_id,
                "adjacent_parent_shard_id": shard.adjacent_parent_shard_id,
            }
            for shard in description.shards
        ],
    }


# -- put -----------------------------------------------------------------------------------------


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

    from .records import MissingKeyError, RecordInputError, parse_put_line

    _check_put_keys(args)
    tally = _PutTally()
    stdin = sys.stdin.fileno()
    async with _connect(args) as client, client.producer(args.name) as producer:
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
        _print_error(example)
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


# -- read ----------------------------------------------------------------------------------------


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
    async with _connect(args) as client, AsyncExitStack() as stack:
        reader: Any
        if args.shard is None and position.sequence is None:
            reader = client.stream_reader(args.name, position, follow=args.follow)
            await stack.enter_async_context(reader)
        else:
            description = await client.describe_stream(args.name)
            shard_id = _shard_to_read(args, description, position)
            reader = client.reader(args.name, shard_id, position, follow=args.follow)
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
    """One line per record: plain, --json or --raw (streamd/cli_records.py)."""
    binary = args.binary or "base64"
    if args.json:
        lines = [json.dumps(record_document(r, binary)).encode() + b"\n" for r in records]
    elif args.raw:
        lines = [r.data + b"\n" for r in records]
    else:
        lines = [plain_line(r.data, binary) for r in records]
    out.write(b"".join(lines))


if __name__ == "__main__":
    sys.exit(main())
