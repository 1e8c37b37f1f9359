"""The Kinesis benchmark: one boto3 workload against streamd's gateway, kinesalite and kinesis-mock.

The workload, the same for every target, from one client process:

1. PutRecords: ``--put-records-calls`` calls of ``--batch-records`` records of ``--record-bytes``
   random bytes each (random partition keys), one call at a time -> records/s.
2. Drain: every shard read from TRIM_HORIZON with GetRecords until caught up -> records/s
   (and a check that every record written came back).
3. ``--single-puts`` PutRecord calls one after the other -> latency p50 / p99.

Targets: streamd (``streamd serve --fsync always`` on a temporary data dir, started here through
``ServerProcess``), kinesalite (``node_modules/.bin/kinesalite`` under ``--kinesalite DIR``) and
kinesis-mock (the npm package ``kinesis-local`` under ``--kinesis-mock DIR``). The npm targets are
optional: a target whose directory is not given, or holds no binary, is skipped and the table
says so. Neither of them writes to disk (in-memory stores), let alone fsyncs. Each target runs
``--repeat`` times on a fresh stream and the table shows medians (``--json`` gives every run).
Also measured: CPU seconds of the target process and of this client during the put phase,
because on a small machine the client's own boto3 work is part of what bounds every figure.

One-time install of the npm targets, outside the repository::

    mkdir -p /tmp/kbench && cd /tmp/kbench && npm install kinesalite kinesis-local
    python -m streamd.bench.kinesis --kinesalite /tmp/kbench --kinesis-mock /tmp/kbench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from ..testing.process import process_cpu_seconds

REGION: Final = "us-east-1"
START_TIMEOUT_S: Final = 60.0
ACTIVE_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
DRAIN_LIMIT: Final = 10_000  # GetRecords Limit, Kinesis's maximum


@dataclass(slots=True)
class Workload:
    put_records_calls: int = 40
    batch_records: int = 500
    record_bytes: int = 100
    single_puts: int = 2000
    shards: int = 4


@dataclass(slots=True)
class RunResult:
    put_records_per_s: float
    put_failed_records: int
    drain_records_per_s: float
    drained_records: int
    put_record_p50_ms: float
    put_record_p99_ms: float
    target_cpu_s_put: float | None
    client_cpu_s_put: float
    # CPU per single PutRecord call, target and client: what the latency is made of.
    target_cpu_ms_per_put_record: float | None
    client_cpu_ms_per_put_record: float


@dataclass(slots=True)
class TargetResult:
    target: str
    skipped: str | None = None
    runs: list[RunResult] = field(default_factory=list)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in self.runs))


# -- targets ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """A running Kinesis endpoint: its URL and (when known) the PIDs whose CPU we read."""

    name: str
    endpoint: str
    pids: tuple[int, ...]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {START_TIMEOUT_S} s")


@contextlib.contextmanager
def _node_target(name: str, command: list[str], port: int, env: dict[str, str]) -> Iterator[Target]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    log = workdir / "log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(port, process, log)
        yield Target(name, f"http://127.0.0.1:{port}", (process.pid,))
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        shutil.rmtree(workdir, ignore_errors=True)


def _kinesalite_command(directory: Path, port: int) -> list[str] | None:
    binary = directory / "node_modules" / ".bin" / "kinesalite"
    if not binary.exists():
        return None
    return [str(binary), "--port", str(port), "--createStreamMs", "0", "--deleteStreamMs", "0"]


def _kinesis_mock_command(directory: Path) -> tuple[list[str], Path] | None:
    package = directory / "node_modules" / "kinesis-local"
    if not (package / "main.js").exists() or shutil.which("node") is None:
        return None
    return ["node", str(package / "main.js")], package / "server.json"


@contextlib.contextmanager
def _streamd_target() -> Iterator[Target]:
    from ..testing import ServerProcess

    with ServerProcess(fsync="always", kinesis=True, log_level="warning") as server:
        yield Target("streamd", server.kinesis_endpoint, (server.pid,))


@contextlib.contextmanager
def _cluster_target(nodes: int) -> Iterator[Target]:
    """``nodes`` cluster nodes and etcd; every request goes to node 1's gateway, which forwards
    what other nodes lead. The stream gets the cluster's default replication factor
    (min(3, nodes)). CPU: every node's, summed (replication runs on all of them)."""
    from ..testing.cluster import LocalCluster

    with LocalCluster(nodes, fsync="always", kinesis=True, log_level="warning") as cluster:
        cluster.wait_registered(timeout_s=START_TIMEOUT_S)
        pids = tuple(node.pid for node in cluster.nodes.values())
        yield Target("streamd cluster", cluster.kinesis_endpoint(1), pids)


def _targets(args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], Any] | str]]:
    """(name, context-manager factory) per target, or (name, why it is skipped)."""
    yield "streamd (fsync always)", _streamd_target
    if args.cluster:
        nodes = args.cluster
        label = f"streamd cluster ({nodes} nodes, RF {min(3, nodes)}, via node 1)"
        yield label, lambda: _cluster_target(nodes)
    if args.kinesalite is None:
        yield "kinesalite", "skipped: no --kinesalite DIR"
    else:
        port = _free_port()
        found_kinesalite = _kinesalite_command(Path(args.kinesalite), port)
        if found_kinesalite is None:
            yield "kinesalite", f"skipped: no node_modules/.bin/kinesalite in {args.kinesalite}"
        else:
            command_kl = found_kinesalite
            yield "kinesalite", lambda: _node_target("kinesalite", command_kl, port, {})
    if args.kinesis_mock is None:
        yield "kinesis-mock", "skipped: no --kinesis-mock DIR"
        return
    found = _kinesis_mock_command(Path(args.kinesis_mock))
    if found is None:
        yield "kinesis-mock", f"skipped: no node_modules/kinesis-local in {args.kinesis_mock}"
        return
    command, cert = found
    port, tls_port = _free_port(), _free_port()
    env = {
        "KINESIS_MOCK_PLAIN_PORT": str(port),
        "KINESIS_MOCK_TLS_PORT": str(tls_port),
        "KINESIS_MOCK_CERT_PATH": str(cert),
        "LOG_LEVEL": "ERROR",
        "CREATE_STREAM_DURATION": "0ms",
        "SHARD_LIMIT": "1000",
    }
    yield "kinesis-mock", lambda: _node_target("kinesis-mock", command, port, env)


# -- the workload -----------------------------------------------------------------------------


def _client(endpoint: str) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 1}, read_timeout=60, max_pool_connections=1),
    )


def _create_stream(client: Any, name: str, shards: int) -> list[str]:
    client.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + ACTIVE_TIMEOUT_S
    while True:
        description = client.describe_stream(StreamName=name)["StreamDescription"]
        if description["StreamStatus"] == "ACTIVE":
            return [shard["ShardId"] for shard in description["Shards"]]
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {name} not ACTIVE after {ACTIVE_TIMEOUT_S} s")
        time.sleep(0.05)


def _cpu(target: Target) -> float | None:
    if not target.pids:
        return None
    with contextlib.suppress(OSError):
        return sum(process_cpu_seconds(pid) for pid in target.pids)
    return None


def _put_phase(
    client: Any, name: str, w: Workload, target: Target
) -> tuple[float, int, float | None, float]:
    rng = random.Random(7)
    pool = [rng.randbytes(w.record_bytes) for _ in range(1024)]
    calls = [
        [
            {"Data": pool[(c * w.batch_records + i) % len(pool)], "PartitionKey": uuid.uuid4().hex}
            for i in range(w.batch_records)
        ]
        for c in range(w.put_records_calls)
    ]
    failed = 0
    cpu_before, client_before = _cpu(target), time.process_time()
    started = time.perf_counter()
    for records in calls:
        failed += client.put_records(StreamName=name, Records=records)["FailedRecordCount"]
    elapsed = time.perf_counter() - started
    cpu_after, client_cpu = _cpu(target), time.process_time() - client_before
    target_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    written = w.put_records_calls * w.batch_records - failed
    return written / elapsed, failed, target_cpu, client_cpu


def _drain_phase(client: Any, name: str, shard_ids: Sequence[str]) -> tuple[float, int]:
    drained = 0
    started = time.perf_counter()
    for shard_id in shard_ids:
        iterator = client.get_shard_iterator(
            StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=DRAIN_LIMIT)
            drained += len(page["Records"])
            iterator = page.get("NextShardIterator")
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
    return drained / (time.perf_counter() - started), drained


def _single_put_phase(
    client: Any, name: str, w: Workload, target: Target
) -> tuple[float, float, float | None, float]:
    data = random.Random(11).randbytes(w.record_bytes)
    latencies_ms: list[float] = []
    cpu_before, client_before = _cpu(target), time.process_time()
    for i in range(w.single_puts):
        started = time.perf_counter()
        client.put_record(StreamName=name, Data=data, PartitionKey=f"k{i}")
        latencies_ms.append((time.perf_counter() - started) * 1000)
    cpu_after, client_cpu = _cpu(target), time.process_time() - client_before
    target_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    latencies_ms.sort()
    return (
        _percentile(latencies_ms, 0.50),
        _percentile(latencies_ms, 0.99),
        None if target_cpu is None else target_cpu * 1000 / w.single_puts,
        client_cpu * 1000 / w.single_puts,
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def run_once(target: Target, w: Workload) -> RunResult:
    client = _client(target.endpoint)
    try:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        shard_ids = _create_stream(client, name, w.shards)
        client.put_record(StreamName=name, Data=b"warm-up", PartitionKey="w")  # connection up
        put_rate, failed, target_cpu, client_cpu = _put_phase(client, name, w, target)
        drain_rate, drained = _drain_phase(client, name, shard_ids)
        expected = w.put_records_calls * w.batch_records - failed + 1
        if drained != expected:
            raise RuntimeError(f"{target.name}: drained {drained} records, wrote {expected}")
        p50, p99, target_ms, client_ms = _single_put_phase(client, name, w, target)
        with contextlib.suppress(Exception):
            client.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        return RunResult(
            put_rate,
            failed,
            drain_rate,
            drained,
            p50,
            p99,
            target_cpu,
            client_cpu,
            target_ms,
            client_ms,
        )
    finally:
        client.close()


# -- report -----------------------------------------------------------------------------------


def _median_of(runs: list[RunResult], name: str, width: int, digits: int) -> str:
    values = [getattr(run, name) for run in runs if getattr(run, name) is not None]
    return f"{statistics.median(values):{width}.{digits}f}" if values else f"{'-':>{width}}"


def _table(results: list[TargetResult], w: Workload) -> str:
    lines = [
        f"PutRecords {w.put_records_calls} x {w.batch_records} x {w.record_bytes} B, "
        f"{w.shards} shard(s); {w.single_puts} single PutRecord; medians of "
        f"{max((len(r.runs) for r in results), default=0)} run(s)",
        f"{'target':<24} {'PutRecords rec/s':>17} {'drain rec/s':>12} {'PutRecord p50 ms':>17} "
        f"{'p99 ms':>8} | CPU s in puts: {'target':>6} {'client':>6} | "
        f"CPU ms per PutRecord: {'target':>6} {'client':>6}",
    ]
    for r in results:
        if r.skipped is not None:
            lines.append(f"{r.target:<24} {r.skipped}")
            continue
        lines.append(
            f"{r.target:<24} {r.median('put_records_per_s'):17,.0f} "
            f"{r.median('drain_records_per_s'):12,.0f} {r.median('put_record_p50_ms'):17.2f} "
            f"{r.median('put_record_p99_ms'):8.2f} | {'':15}"
            f"{_median_of(r.runs, 'target_cpu_s_put', 6, 2)} "
            f"{_median_of(r.runs, 'client_cpu_s_put', 6, 2)} | {'':21}"
            f"{_median_of(r.runs, 'target_cpu_ms_per_put_record', 6, 2)} "
            f"{_median_of(r.runs, 'client_cpu_ms_per_put_record', 6, 2)}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamd bench kinesis", description=DESCRIPTION)
    add_arguments(parser)
    return parser


DESCRIPTION: Final = "boto3 workload against streamd's Kinesis gateway, kinesalite, kinesis-mock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload's options (``streamd bench kinesis`` and ``python -m`` share them)."""
    parser.add_argument("--kinesalite", metavar="DIR", help="where `npm install kinesalite` ran")
    parser.add_argument(
        "--kinesis-mock", metavar="DIR", help="where `npm install kinesis-local` ran"
    )
    parser.add_argument(
        "--cluster",
        type=_positive,
        default=None,
        metavar="N",
        help="also a local cluster of N nodes with etcd (streamd dev cluster's shape)",
    )
    parser.add_argument("--only", choices=["streamd", "kinesalite", "kinesis-mock"], default=None)
    parser.add_argument("--put-records-calls", type=_positive, default=40)
    parser.add_argument("--batch-records", type=_positive, default=500)
    parser.add_argument("--record-bytes", type=_positive, default=100)
    parser.add_argument("--single-puts", type=_positive, default=2000)
    parser.add_argument("--shards", type=_positive, default=4)
    parser.add_argument("--repeat", type=_positive, default=3)
    parser.add_argument("--json", action="store_true", help="every run as JSON, not a table")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.batch_records > 500:
        print("error: PutRecords takes at most 500 records", file=sys.stderr)
        return 2
    w = Workload(
        args.put_records_calls, args.batch_records, args.record_bytes, args.single_puts, args.shards
    )
    results: list[TargetResult] = []
    for name, factory in _targets(args):
        if args.only is not None and not name.startswith(args.only):
            continue
        if isinstance(factory, str):
            results.append(TargetResult(name, skipped=factory))
            continue
        result = TargetResult(name)
        with factory() as target:
            for _ in range(args.repeat):
                result.runs.append(run_once(target, w))
        results.append(result)
    if args.json:
        doc = {
            "workload": asdict(w),
            "targets": [
                {"target": r.target, "skipped": r.skipped, "runs": [asdict(x) for x in r.runs]}
                for r in results
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(_table(results, w))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
