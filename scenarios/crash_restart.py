#!/usr/bin/env python3
"""Crash and restart under load: kill -9 the server while a producer writes, then check history.

    python scenarios/crash_restart.py --seconds 10 --kills 3 [--json]

What runs, all against one real ``streamd serve --fsync always`` process:

* a writer puts records through the shard-aware ``Producer`` at ``--rate`` records/s over
  ``--keys`` partition keys; every record's bytes name its (key, counter) and the history
  remembers what was sent and what each ``put`` finally answered (acked at a sequence number,
  or failed: outcome unknown);
* one tailing reader per shard follows the tip and remembers every record it was handed;
* a fault task kill -9s the server ``--kills`` times at jittered intervals and restarts it over
  the same data dir and port (the producer rides through on its retries);
* at the end the writer flushes, the server is killed -9 once more (so that every ack must have
  been durable, not merely in the page cache of a live process), restarted, and every shard is
  read from the trim horizon.

The checker (``streamd.testing.history``) then demands: every acknowledged record present,
byte-exact, at its acknowledged sequence number, once, in per-key order; nothing found that
was never sent or that differs from what was sent; nothing a tailing reader saw retracted.
Failed (indeterminate) records may be present or absent, but only whole and only once.
Exit status 0 when the history checks out, 1 on any violation (the data dir is then kept).

Importable: ``await run_scenario(ScenarioOptions(seconds=3, kills=1))`` returns the
``CheckReport``; the integration tests do exactly that.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from streamd.testing import CheckReport, History, Seen, ServerProcess, check, make_data
from streamd_client import Client, Position, connect, errors

_TICK_S = 0.01
_SETTLE_WINDOW_MAX = 500_000


@dataclass
class ScenarioOptions:
    seconds: float = 10.0
    kills: int = 3
    shards: int = 4
    keys: int = 64
    rate: int = 20_000  # records per second offered by the writer
    record_bytes: int = 100
    seed: int | None = None
    data_dir: Path | None = None  # None: a temporary dir, removed when the history checks out
    say: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class ScenarioResult:
    report: CheckReport
    kills: int
    data_dir: Path
    producer_stats: dict[str, int]
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.report.to_dict(),
            "kills": self.kills,
            "data_dir": str(self.data_dir),
            "producer": self.producer_stats,
            "elapsed_s": round(self.elapsed_s, 2),
        }


async def run_scenario(options: ScenarioOptions) -> ScenarioResult:
    """Run the whole scenario (bounded by about ``seconds`` + restarts + checking)."""
    rng = random.Random(options.seed)
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="streamd-crash-"))
    started = time.monotonic()
    server = ServerProcess(data_dir / "server", fsync="always")
    try:
        await anyio.to_thread.run_sync(server.start)
        options.say(f"server pid {server.pid} on {server.endpoint}, data in {data_dir}")
        history = History()
        async with connect(server.endpoint, request_timeout_s=5.0) as client:
            await client.create_stream("crash", options.shards)
            shard_ids = [s.shard_id for s in (await client.describe_stream("crash")).shards]
            kills, stats = await _under_faults(options, rng, server, client, history, shard_ids)
        options.say("final kill -9 and restart before the check")
        await anyio.to_thread.run_sync(server.kill9)
        await anyio.to_thread.run_sync(server.restart)
        async with connect(server.endpoint) as client:
            found = {shard_id: await _read_all(client, shard_id) for shard_id in shard_ids}
        report = check(history, found)
    finally:
        await anyio.to_thread.run_sync(server.close)
    result = ScenarioResult(report, kills, data_dir, stats, time.monotonic() - started)
    if report.ok and options.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


async def _under_faults(
    options: ScenarioOptions,
    rng: random.Random,
    server: ServerProcess,
    client: Client,
    history: History,
    shard_ids: list[str],
) -> tuple[int, dict[str, int]]:
    """Writer + tailing readers + the fault task; returns (kills done, producer stats)."""
    kills_done = 0
    async with client.producer(
        "crash", retries_max=40, backoff_ms_initial=20, backoff_ms_max=500
    ) as producer:
        async with anyio.create_task_group() as readers:
            for shard_id in shard_ids:
                readers.start_soon(_tail, client, shard_id, history)
            async with anyio.create_task_group() as load:
                stop_writing = anyio.Event()
                load.start_soon(_write, options, producer, history, stop_writing)
                interval_s = options.seconds / (options.kills + 1)
                for kill in range(options.kills):
                    await anyio.sleep(interval_s * rng.uniform(0.7, 1.3))
                    await anyio.to_thread.run_sync(server.kill9)
                    kills_done += 1
                    options.say(f"kill -9 #{kill + 1} at {len(history.sent):,} records sent")
                    await anyio.sleep(rng.uniform(0.0, 0.3))
                    await anyio.to_thread.run_sync(server.restart)
                    options.say(f"restarted: pid {server.pid}")
                await anyio.sleep(interval_s)
                stop_writing.set()
            readers.cancel_scope.cancel()
        stats = producer.stats
        stats_dict = {
            "acked_records": stats.acked_records,
            "failed_records": stats.failed_records,
            "retried_batches": stats.retried_batches,
            "duplicate_batches": stats.duplicate_batches,
        }
    options.say(f"writer done: {len(history.sent):,} sent, {len(history.acked):,} acked")
    return kills_done, stats_dict


async def _write(
    options: ScenarioOptions, producer: Any, history: History, stop: anyio.Event
) -> None:
    """Offer ``rate`` records/s in ticks; then flush and settle every record's fate."""
    keys = [f"k{i}" for i in range(options.keys)]
    counters = dict.fromkeys(keys, 0)
    pending: deque[tuple[str, int, Any]] = deque()
    per_tick = max(1, int(options.rate * _TICK_S))
    index = 0
    next_tick = anyio.current_time()
    while not stop.is_set():
        for _ in range(per_tick):
            key = keys[index % len(keys)]
            index += 1
            counter = counters[key]
            counters[key] = counter + 1
            data = make_data(key, counter, options.record_bytes)
            history.record_sent(key, counter, data)
            pending.append((key, counter, await producer.put(data, key)))
        while pending and (pending[0][2].done() or len(pending) > _SETTLE_WINDOW_MAX):
            await _settle(history, *pending.popleft())
        next_tick += _TICK_S
        await anyio.sleep(max(0.0, next_tick - anyio.current_time()))
    await producer.flush()
    while pending:
        await _settle(history, *pending.popleft())


async def _settle(history: History, key: str, counter: int, pending: Any) -> None:
    try:
        result = await pending.result()
    except errors.StreamdError as exc:
        history.record_failure(key, counter, exc.code)
    else:
        history.record_ack(key, counter, result.shard_id, result.sequence_number)


async def _tail(client: Client, shard_id: str, history: History) -> None:
    """Follow one shard forever, surviving restarts; remember everything handed to us."""
    position = Position.trim_horizon()
    while True:
        reader = client.reader("crash", shard_id, position, follow=True, wait_ms=500)
        try:
            async for record in reader:
                history.record_observed(
                    Seen(record.shard_id, record.sequence_number, record.partition_key, record.data)
                )
        except errors.StreamdError as exc:
            if not exc.retryable:
                raise
            position = reader.position
            await anyio.sleep(0.1)


async def _read_all(client: Client, shard_id: str) -> list[Seen]:
    reader = client.reader("crash", shard_id, Position.trim_horizon(), max_bytes=4 << 20)
    return [
        Seen(record.shard_id, record.sequence_number, record.partition_key, record.data)
        async for record in reader
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument("--rate", type=int, default=20_000, help="records/s offered")
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None, help="kept afterwards")
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    options = ScenarioOptions(
        seconds=args.seconds,
        kills=args.kills,
        shards=args.shards,
        keys=args.keys,
        rate=args.rate,
        record_bytes=args.record_bytes,
        seed=args.seed,
        data_dir=args.data_dir,
        say=lambda message: print(f"crash_restart: {message}", file=sys.stderr, flush=True),
    )
    result = anyio.run(run_scenario, options, backend=args.backend)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.report.summary())
        print(
            f"kills: {result.kills}, elapsed {result.elapsed_s:.1f} s, "
            f"producer {result.producer_stats}"
        )
    if not result.report.ok:
        print(f"data and server log kept in {result.data_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
