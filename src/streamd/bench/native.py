"""``streamd bench produce|consume``: throughput and latency figures, printed, never asserted.

produce
    1. bulk: one Producer (shard-aware batches, the client's fast path) puts ``--records``
       records of ``--record-bytes`` into a ``--shards`` stream (4 by default: the producer
       keeps one batch in flight per shard, so one shard measures a serial pipeline) as fast
       as ``put`` accepts them, then flushes. Reports
       records/s and MB/s of record data, and records per CPU-second of the server process
       (utime + stime from /proc) and of this client process.
    2. ack latency: ``--latency-samples`` sequential ``put_record`` calls, one in flight at a
       time; p50/p99/p999 of call-to-answer time. With ``--fsync always`` this includes a
       group commit's fdatasync.
consume
    1. caught-up reader: pre-fill one shard, then read it from the trim horizon with
       ``read_page`` (whole stored batches, decoded on the client). Reports records/s.
    2. tailing reader: a follower long-polls at the tip while this process puts one record at
       a time (``--tail-interval-ms`` apart); each record carries its send time, and the latency
       is send -> record in the reader's hands. p50/p99/p999.

Without ``--endpoint`` the bench starts its own server (``streamd serve --fsync always`` on a
temporary data dir and port 0, via ``streamd.testing.ServerProcess``) so that it can read the
server's CPU time; with ``--endpoint`` pass ``--server-pid`` to get the CPU figure. Each of
``--repeat`` runs uses a fresh stream; the figures reported are the medians over runs.
Progress goes to stderr; the result to stdout (``--json``: one JSON document).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

RECORD_BYTES_DEFAULT: Final = 100
PAYLOAD_POOL_SIZE: Final = 1024
KEY_POOL_SIZE: Final = 4096
READ_BYTES_MAX: Final = 4 * 1024 * 1024  # one answer must fit an 8 MiB frame
TAIL_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where to benchmark: an endpoint, and the server's pid when we can read its CPU."""

    endpoint: str
    server_pid: int | None
    ca: str | None = None  # TLS: the CA that signed the server's certificate


def add_parser(commands: Any, add_endpoint: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``bench produce``, ``bench consume`` and ``bench kinesis`` on the CLI."""
    del add_endpoint  # bench's --endpoint defaults to "start my own server", not the env
    bench = commands.add_parser("bench", help="measure throughput and latency")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    produce = kinds.add_parser("produce", help="bulk produce rate and single-put ack latency")
    consume = kinds.add_parser("consume", help="caught-up read rate and tailing latency")
    for sub, records, samples in ((produce, 500_000, 5_000), (consume, 1_000_000, 2_000)):
        # Suppressed, not None: a None here would erase an --endpoint given before ``bench``
        # (streamd/cli/endpoint.py); resolve() sets None when it is given nowhere.
        sub.add_argument(
            "--endpoint",
            default=argparse.SUPPRESS,
            metavar="HOST:PORT",
            help="default: start a server",
        )
        sub.add_argument("--server-pid", type=int, default=None, help="for CPU with --endpoint")
        sub.add_argument("--fsync", default="always", choices=["always", "interval", "never"])
        sub.add_argument("--records", type=int, default=records, metavar="N")
        sub.add_argument("--record-bytes", type=int, default=RECORD_BYTES_DEFAULT, metavar="B")
        sub.add_argument("--latency-samples", type=int, default=samples, metavar="M")
        sub.add_argument("--repeat", type=int, default=3, metavar="K", help="median of K runs")
        sub.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
        sub.add_argument("--json", action="store_true", help="print one JSON document")
        sub.add_argument(
            "--replication-factor",
            type=int,
            default=None,
            metavar="N",
            help="replicas per shard of the bench's stream (a cluster --endpoint)",
        )
        sub.add_argument(
            "--tls", action="store_true",
            help="over TLS: the bench's own server gets `dev certs` certificates (with "
            "--endpoint: give --tls-ca)",
        )  # fmt: skip
        sub.add_argument("--tls-ca", default=None, metavar="FILE", help="with --endpoint --tls")
    produce.add_argument("--shards", type=int, default=4, metavar="S")
    produce.add_argument("--linger-ms", type=int, default=5)
    produce.add_argument("--batch-records-max", type=int, default=500)
    produce.add_argument("--in-flight-max", type=int, default=16)
    consume.add_argument("--tail-interval-ms", type=float, default=1.0)
    produce.set_defaults(handler=run, bench=_produce_once)
    consume.set_defaults(handler=run, bench=_consume_once, shards=1)
    from . import kinesis as bench_kinesis  # stdlib only at import; boto3 is imported when it runs

    kinesis = kinds.add_parser(
        "kinesis", help="boto3 workload: the Kinesis gateway vs kinesalite and kinesis-mock"
    )
    kinesis.description = bench_kinesis.DESCRIPTION
    bench_kinesis.add_arguments(kinesis)
    kinesis.set_defaults(handler=bench_kinesis.run)


# -- driver --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run ``--repeat`` rounds of the chosen bench and print the medians."""
    import anyio

    from streamd_client import errors

    for name in ("records", "record_bytes", "repeat", "latency_samples"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    runs: list[dict[str, Any]] = []
    try:
        with _target(args) as target:
            for index in range(args.repeat):
                _progress(f"run {index + 1}/{args.repeat}: {args.bench_kind} ...")
                runs.append(anyio.run(args.bench, args, target, backend=args.backend))
    except errors.StreamdError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    report = summarize(args, runs)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[Target]:
    if args.endpoint is not None:
        if args.tls:
            yield Target(f"tls://{args.endpoint}", args.server_pid, args.tls_ca)
        else:
            yield Target(args.endpoint, args.server_pid)
        return
    from ..testing import ServerProcess

    with contextlib.ExitStack() as stack:
        extra: list[str] = []
        ca = None
        if args.tls:
            import tempfile
            from pathlib import Path

            from ..security.certs import write_dev_certs

            certs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamd-tls-")))
            write_dev_certs(certs)
            extra = [
                "--tls-cert",
                str(certs / "server.pem"),
                "--tls-key",
                str(certs / "server.key"),
            ]
            ca = str(certs / "ca.pem")
        _progress(f"starting a server (--fsync {args.fsync}, TLS {'on' if ca else 'off'})")
        server = stack.enter_context(
            ServerProcess(fsync=args.fsync, log_level="warning", extra_args=extra)
        )
        _progress(f"server pid {server.pid} listening on {server.endpoint}")
        endpoint = f"tls://{server.endpoint}" if ca else server.endpoint
        yield Target(endpoint, server.pid, ca)


def _connect(target: Target) -> Any:
    from streamd_client import connect

    return connect(target.endpoint, ca=target.ca)


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    from ..testing import process_cpu_seconds

    try:
        return process_cpu_seconds(pid)
    except (OSError, ValueError):
        return None


def _payloads(record_bytes: int) -> list[bytes]:
    """Random (incompressible: the honest case for zstd) payloads, reused round-robin."""
    return [os.urandom(record_bytes) for _ in range(PAYLOAD_POOL_SIZE)]


def _keys() -> list[str]:
    return [f"key-{i}" for i in range(KEY_POOL_SIZE)]


def percentiles_ms(samples_ns: list[int]) -> dict[str, float | None]:
    """Nearest-rank p50/p99/p999 in milliseconds."""
    if not samples_ns:
        return {"p50": None, "p99": None, "p999": None}
    ordered = sorted(samples_ns)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return round(ordered[index] / 1e6, 4)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999)}


def _per_cpu_s(count: int, cpu_s: float | None) -> float | None:
    if cpu_s is None or cpu_s <= 0:
        return None
    return round(count / cpu_s)


# -- produce -------------------------------------------------------------------------------------


async def _produce_once(args: argparse.Namespace, target: Target) -> dict[str, Any]:

    payloads, keys = _payloads(args.record_bytes), _keys()
    stream = f"bench-{uuid.uuid4().hex[:12]}"
    async with _connect(target) as client:
        await client.create_stream(stream, args.shards, replication_factor=args.replication_factor)
        try:
            bulk = await _bulk_produce(args, target, client, stream, payloads, keys)
            _progress(
                f"  bulk: {bulk['records_per_s']:,.0f} records/s, {bulk['mb_per_s']:.1f} MB/s, "
                f"server {bulk['server_records_per_cpu_s'] or '?'} records/CPU-s"
            )
            samples_ns: list[int] = []
            for i in range(args.latency_samples):
                started = time.perf_counter_ns()
                await client.put_record(stream, payloads[i % len(payloads)], keys[i % len(keys)])
                samples_ns.append(time.perf_counter_ns() - started)
            latency = percentiles_ms(samples_ns)
            _progress(f"  ack latency ms: {latency}")
        finally:
            await client.delete_stream(stream)
    return {**bulk, "ack_latency_ms": latency}


async def _bulk_produce(
    args: argparse.Namespace,
    target: Target,
    client: Any,
    stream: str,
    payloads: list[bytes],
    keys: list[str],
) -> dict[str, Any]:
    count = args.records
    producer = client.producer(
        stream,
        linger_ms=args.linger_ms,
        batch_records_max=args.batch_records_max,
        in_flight_max=args.in_flight_max,
    )
    async with producer:
        server_cpu_before, client_cpu_before = _cpu_s(target.server_pid), time.process_time()
        started = time.perf_counter()
        put = producer.put
        payload_count, key_count = len(payloads), len(keys)
        for i in range(count):
            await put(payloads[i % payload_count], keys[i % key_count])
        await producer.flush()
        elapsed_s = time.perf_counter() - started
        server_cpu_after, client_cpu_after = _cpu_s(target.server_pid), time.process_time()
        acked, failed = producer.stats.acked_records, producer.stats.failed_records
    if failed or acked != count:
        _progress(f"  WARNING: {failed} records failed, {acked} of {count} acknowledged")
    server_cpu_s = (
        None
        if server_cpu_before is None or server_cpu_after is None
        else server_cpu_after - server_cpu_before
    )
    return {
        "records_acked": acked,
        "records_failed": failed,
        "elapsed_s": round(elapsed_s, 4),
        "records_per_s": round(acked / elapsed_s),
        "mb_per_s": round(acked * args.record_bytes / elapsed_s / 1e6, 2),
        "server_cpu_s": None if server_cpu_s is None else round(server_cpu_s, 3),
        "server_records_per_cpu_s": _per_cpu_s(acked, server_cpu_s),
        "client_records_per_cpu_s": _per_cpu_s(acked, client_cpu_after - client_cpu_before),
    }


# -- consume -------------------------------------------------------------------------------------


async def _consume_once(args: argparse.Namespace, target: Target) -> dict[str, Any]:

    stream = f"bench-{uuid.uuid4().hex[:12]}"
    async with _connect(target) as client:
        await client.create_stream(stream, 1, replication_factor=args.replication_factor)
        try:
            shard_id = (await client.describe_stream(stream)).shards[0].shard_id
            await _prefill(args, client, stream)
            caught_up = await _caught_up_read(args, target, client, stream, shard_id)
            _progress(f"  caught-up reader: {caught_up['records_per_s']:,.0f} records/s")
            tail_ms = await _tail_latency(args, client, stream, shard_id)
            _progress(f"  tailing latency ms: {tail_ms}")
        finally:
            await client.delete_stream(stream)
    return {**caught_up, "tail_latency_ms": tail_ms}


async def _prefill(args: argparse.Namespace, client: Any, stream: str) -> None:
    payloads, keys = _payloads(args.record_bytes), _keys()
    started = time.perf_counter()
    async with client.producer(stream) as producer:
        for i in range(args.records):
            await producer.put(payloads[i % len(payloads)], keys[i % len(keys)])
        await producer.flush()
        failed = producer.stats.failed_records
    if failed:
        _progress(f"  WARNING: pre-fill: {failed} records failed")
    _progress(f"  pre-filled {args.records:,} records in {time.perf_counter() - started:.2f} s")


async def _caught_up_read(
    args: argparse.Namespace, target: Target, client: Any, stream: str, shard_id: str
) -> dict[str, Any]:
    from streamd_client import Position

    reader = client.reader(stream, shard_id, Position.trim_horizon(), max_bytes=READ_BYTES_MAX)
    server_cpu_before, client_cpu_before = _cpu_s(target.server_pid), time.process_time()
    started = time.perf_counter()
    count = read_bytes = 0
    while (page := await reader.read_page()) is not None:
        count += len(page)
        read_bytes += sum(len(record.data) for record in page)
    elapsed_s = time.perf_counter() - started
    server_cpu_after, client_cpu_after = _cpu_s(target.server_pid), time.process_time()
    server_cpu_s = (
        None
        if server_cpu_before is None or server_cpu_after is None
        else server_cpu_after - server_cpu_before
    )
    if count != args.records:
        _progress(f"  WARNING: read {count} records, expected {args.records}")
    return {
        "records_read": count,
        "elapsed_s": round(elapsed_s, 4),
        "records_per_s": round(count / elapsed_s),
        "mb_per_s": round(read_bytes / elapsed_s / 1e6, 2),
        "server_records_per_cpu_s": _per_cpu_s(count, server_cpu_s),
        "client_records_per_cpu_s": _per_cpu_s(count, client_cpu_after - client_cpu_before),
    }


async def _tail_latency(
    args: argparse.Namespace, client: Any, stream: str, shard_id: str
) -> dict[str, float | None]:
    import anyio

    from streamd_client import Position

    samples_ns: list[int] = []
    wanted = args.latency_samples
    pad = b"\0" * max(0, args.record_bytes - 20)
    received = anyio.Event()

    async def follow() -> None:
        reader = client.reader(stream, shard_id, Position.latest(), follow=True, wait_ms=5000)
        async for record in reader:
            now_ns = time.perf_counter_ns()
            sent_ns = int(record.data[:20])
            samples_ns.append(now_ns - sent_ns)
            received.set()
            if len(samples_ns) >= wanted:
                return

    with anyio.fail_after(TAIL_TIMEOUT_S):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(follow)
            await anyio.sleep(0.2)  # the follower's first long-poll is parked at the tip
            for _ in range(wanted):
                received = anyio.Event()
                stamp = b"%020d" % time.perf_counter_ns()
                await client.put_record(stream, stamp + pad, "tail")
                with anyio.move_on_after(1.0):
                    await received.wait()
                if args.tail_interval_ms > 0:
                    await anyio.sleep(args.tail_interval_ms / 1000)
    return percentiles_ms(samples_ns)


# -- report --------------------------------------------------------------------------------------


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return round(statistics.median(present), 4)


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median over runs (nested dicts too)."""
    merged: dict[str, Any] = {}
    for name, first in runs[0].items():
        if isinstance(first, dict):
            merged[name] = _median_of([run[name] for run in runs])
        elif isinstance(first, int | float) or first is None:
            merged[name] = _median([run[name] for run in runs])
    return merged


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": args.bench_kind,
        "command": "streamd " + " ".join(sys.argv[1:]) if sys.argv[1:] else "streamd bench",
        "records": args.records,
        "record_bytes": args.record_bytes,
        "shards": args.shards,
        "fsync": args.fsync if args.endpoint is None else "(external server)",
        "client_backend": args.backend,
        "tls": args.tls,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "median": _median_of(runs),
        "runs": runs,
    }


def format_report(report: dict[str, Any]) -> str:
    median = report["median"]
    lines = [
        f"streamd bench {report['benchmark']}: {report['records']:,} records x "
        f"{report['record_bytes']} B, {report['shards']} shard(s), fsync {report['fsync']}, "
        f"TLS {'on' if report.get('tls') else 'off'}, "
        f"client on {report['client_backend']}, median of {report['repeat']} run(s)"
    ]
    if report["benchmark"] == "produce":
        latency = median["ack_latency_ms"]
        lines += [
            f"  bulk produce        {median['records_per_s']:>12,.0f} records/s"
            f"   {median['mb_per_s']:.1f} MB/s",
            f"  server CPU          {_fmt(median['server_records_per_cpu_s'])} records/CPU-s",
            f"  client CPU          {_fmt(median['client_records_per_cpu_s'])} records/CPU-s",
            f"  put ack latency     p50 {latency['p50']} ms   p99 {latency['p99']} ms"
            f"   p999 {latency['p999']} ms",
        ]
    else:
        latency = median["tail_latency_ms"]
        lines += [
            f"  caught-up reader    {median['records_per_s']:>12,.0f} records/s"
            f"   {median['mb_per_s']:.1f} MB/s",
            f"  server CPU          {_fmt(median['server_records_per_cpu_s'])} records/CPU-s",
            f"  client CPU          {_fmt(median['client_records_per_cpu_s'])} records/CPU-s",
            f"  tailing latency     p50 {latency['p50']} ms   p99 {latency['p99']} ms"
            f"   p999 {latency['p999']} ms",
        ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{value:>12,.0f}" if value is not None else f"{'n/a':>12}"
