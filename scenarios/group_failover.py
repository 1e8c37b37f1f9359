"""Scenario 11 (issue 13): a consumer group of 3 workers while a node is killed and a shard split.

A 3-node cluster, a stream of 2 shards at replication factor 3, an idempotent Producer writing
16 keys (each record names its key and a per-key counter), and a group of three GroupWorkers in
this process, each bootstrapped from a different node. Each round kills -9 a node (the seeded
choice: it may hold leaders, the group's coordinator, or a worker's first node), waits for the
failover, splits an open shard through a surviving node, and restarts the killed node. Then the
writer stops, the workers drain, and ``streamd.testing.group_check`` checks the history: every
acknowledged record processed (at least once), per-key order kept across failovers and across
each split's parent and children (no record processed for the first time after a later one of
its key), and no shard's checkpoint ever going back (the group's description, polled 4 times a
second from any node).

    python -m scenarios.group_failover --rounds 3 --seed 7
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from streamd.testing.cluster import LocalCluster
from streamd.testing.group_check import GroupReport, RecordId, check_group
from streamd_client import connect, errors, group_admin
from streamd_client.group import GroupWorker
from streamd_client.producer import PendingPut

STREAM = "orders"
GROUP = "billing"
KEYS = 16
RATE = 400  # records per second
SESSION_MS = 3_000
FAILOVER_S = 3.0
STEP_S_MAX = 30.0
DRAIN_S_MAX = 60.0


@dataclass
class History:
    acked: list[RecordId] = field(default_factory=list)
    failed: int = 0
    processed: list[RecordId] = field(default_factory=list)
    checkpoints: dict[str, list[str | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    workers: dict[str, GroupWorker] = field(default_factory=dict)


async def _write(bootstrap: str, history: History, stop: trio.Event, done: trio.Event) -> None:
    """Write until ``stop``, flush, and set ``done`` once every record's fate is known."""
    try:
        await _write_until(bootstrap, history, stop)
    finally:
        done.set()


async def _write_until(bootstrap: str, history: History, stop: trio.Event) -> None:
    counters = itertools.count()
    async with connect(bootstrap, request_timeout_s=5.0) as client:
        producer = client.producer(
            STREAM, retries_max=60, backoff_ms_initial=20, backoff_ms_max=200
        )
        async with producer, trio.open_nursery() as settling:
            while not stop.is_set():
                for _ in range(RATE // 20):
                    n = next(counters)
                    key, counter = f"k{n % KEYS}", n // KEYS
                    pending = await producer.put(f"{key}:{counter}".encode(), key)
                    settling.start_soon(_settle, pending, (key, counter), history)
                await trio.sleep(0.05)
            with trio.move_on_after(STEP_S_MAX):
                await producer.flush()


async def _settle(pending: PendingPut, record: RecordId, history: History) -> None:
    try:
        await pending.result()
    except errors.StreamdError:
        history.failed += 1
    else:
        history.acked.append(record)


async def _work(bootstrap: str, name: str, history: History) -> None:
    async with connect(bootstrap, request_timeout_s=5.0) as client:
        async with GroupWorker(
            client,
            STREAM,
            GROUP,
            member_id=name,
            session_timeout_ms=SESSION_MS,
            checkpoint_every_records=50,
            read_wait_ms=200,
            shutdown_timeout_s=2,
        ) as worker:
            history.workers[name] = worker
            async for batch in worker:
                for record in batch.records:
                    key, _, counter = record.data.decode().partition(":")
                    history.processed.append((key, int(counter)))


async def _poll_checkpoints(bootstrap: str, history: History, stop: trio.Event) -> None:
    async with connect(bootstrap, request_timeout_s=2.0) as client:
        while not stop.is_set():
            try:
                view = await group_admin.describe_group(client, STREAM, GROUP)
            except errors.StreamdError:
                pass  # not joined yet, or the node asked is down: the next poll asks again
            else:
                for shard in view["shards"]:
                    history.checkpoints.setdefault(shard["shard_id"], []).append(
                        shard["checkpoint"]
                    )
            await trio.sleep(0.25)


async def _retry(what: str, call: Callable[[], object], history: History) -> object:
    deadline = trio.current_time() + STEP_S_MAX
    while True:
        try:
            return await call()  # type: ignore[misc]
        except errors.StreamdError as exc:
            if trio.current_time() > deadline:
                raise
            history.notes.append(f"{what}: {exc.code}, retried")
            await trio.sleep(0.5)


async def _round(
    cluster: LocalCluster,
    rng: random.Random,
    history: History,
    say: Callable[[str], None],
    group: trio.Nursery,
    index: int,
) -> None:
    victim = rng.choice(sorted(cluster.nodes))
    await trio.to_thread.run_sync(cluster.kill9, victim)
    say(f"kill -9 {victim}")
    await trio.sleep(FAILOVER_S)
    survivors = ",".join(cluster.endpoint(n) for n in sorted(cluster.nodes) if n != victim)
    async with connect(survivors, request_timeout_s=10.0) as admin:
        description = await _retry("describe", lambda: admin.describe_stream(STREAM), history)
        shard = rng.choice(description.open_shards).shard_id  # type: ignore[attr-defined]
        children = await _retry("split", lambda: admin.split_shard(STREAM, shard), history)
        say(f"split {shard} into {children} while {victim} is down")
    await trio.to_thread.run_sync(cluster.restart, victim)
    say(f"{victim} restarted")
    # A worker leaves and a new one joins: its leases move, the new owner replays from the
    # last checkpoint.
    leaving = sorted(history.workers)[index % len(history.workers)]
    history.workers.pop(leaving).request_shutdown()
    group.start_soon(_work, cluster.bootstrap, f"w{index + 4}", history)
    say(f"{leaving} left, w{index + 4} joined")
    await trio.sleep(FAILOVER_S)


async def run(rounds: int, seed: int | None, root: Path, say: Callable[[str], None]) -> GroupReport:
    rng = random.Random(seed)
    history = History()
    with LocalCluster(3, root_dir=root / "cluster", kinesis=False) as cluster:
        cluster.wait_registered(timeout_s=30)
        nodes = sorted(cluster.nodes)
        async with connect(cluster.bootstrap, request_timeout_s=10.0) as admin:
            await admin.create_stream(STREAM, 2, replication_factor=3)
            await admin.wait_for_active(STREAM, STEP_S_MAX)
        stop_writing = trio.Event()
        async with trio.open_nursery() as writer:
            written = trio.Event()
            writer.start_soon(_write, cluster.bootstrap, history, stop_writing, written)
            async with trio.open_nursery() as group:
                for k in range(3):  # worker k asks node k first, the others after it
                    order = nodes[k:] + nodes[:k]
                    bootstrap = ",".join(cluster.endpoint(n) for n in order)
                    group.start_soon(_work, bootstrap, f"w{k + 1}", history)
                group.start_soon(_poll_checkpoints, cluster.bootstrap, history, stop_writing)
                await trio.sleep(3.0)
                for index in range(rounds):
                    say(f"round {index + 1} of {rounds}")
                    await _round(cluster, rng, history, say, group, index)
                await trio.sleep(2.0)
                stop_writing.set()
                with trio.move_on_after(2 * STEP_S_MAX):
                    await written.wait()  # every acknowledgement in before the drain check
                await _wait_drained(history, say)
                for worker in history.workers.values():
                    worker.request_shutdown()
                group.cancel_scope.deadline = trio.current_time() + STEP_S_MAX
    report = check_group(history.acked, history.processed, history.checkpoints)
    say(f"producer: {len(history.acked)} acknowledged, {history.failed} failed")
    shown = sum(len(v) for v in history.checkpoints.values())
    distinct = sum(len(set(v)) for v in history.checkpoints.values())
    say(
        f"checkpoints polled: {shown} observations of {len(history.checkpoints)} shards, "
        f"{distinct} distinct values"
    )
    for note in sorted(set(history.notes)):
        say(f"note: {note}")
    return report


async def _wait_drained(history: History, say: Callable[[str], None]) -> None:
    started = time.monotonic()
    with trio.move_on_after(DRAIN_S_MAX):
        while not set(history.acked) <= set(history.processed):  # noqa: ASYNC110 - polls
            await trio.sleep(0.2)
    say(f"drained after the writer stopped: {time.monotonic() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenarios.group_failover")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--root-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.root_dir or Path(tempfile.mkdtemp(prefix="streamd-group_failover-"))

    def say(message: str) -> None:
        print(f"group_failover: {message}", flush=True)

    say(f"seed {args.seed}; under {root}")
    report = trio.run(run, args.rounds, args.seed, root, say)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
