"""The frame every cluster fault scenario (scenarios/*.py) runs in: cluster, load, faults, check.

``run_scenario(name, fault_round, options)``:

1. starts a ``LocalCluster`` (real etcd, ``nodes`` real ``streamd serve --cluster`` processes,
   fsync always) and creates one stream of ``shards`` shards at ``replication_factor``;
2. runs a ``Workload`` (idempotent Producer, plain put_records, one tailing reader per shard
   through another node than its leader) and, after ``warmup_s``, calls
   ``fault_round(ctx, i)`` for each of ``rounds`` rounds; a round strikes its faults through
   ``ctx`` (which records each in the history with the shards it affects) and heals them;
3. afterwards restarts whatever is still down, waits until every shard has a leader and takes
   writes again, lets the load run ``cooldown_s`` more, then stops it and settles every
   record's fate;
4. reads every shard from the trim horizon through a fresh client, stops every node (SIGTERM)
   and etcd, opens each node's replica log of each shard offline and hands all of it to
   ``history.check``: acked records present (exactly once for the producer, at least once for
   plain puts), one record per offset, nothing read then retracted, no reader gap, committed
   prefixes byte-identical on every replica, writes resumed after every fault.

The report, the time from each fault to writes resuming (per fault, then the distribution)
and the load's figures are printed; exit status 1 on any violation, and the cluster's root
(data dirs, node logs) is kept for a post-mortem.

Where the replica logs are: ``streamd.cluster.replicated.replica_log_dir`` (the replicated
engine's layout, ``<shard dir>/replica/log``); with replication factor 1 the shard's own log
(``streams-by-id/<id>/<shard>``) is read instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from streamd_client import Client, connect, errors
from streamd_client.model import parse_sequence
from streamd_client.results import StreamDescription

from .. import layout
from ..cluster.replicated import replica_log_dir
from ..config import parse_cluster_url
from ..meta.etcd import EtcdMetaStore
from ..meta.keys import SHARDS_PREFIX, ShardAssignment
from . import disk
from .cluster import ClusterStartError, LocalCluster
from .history import CheckReport, History, Seen, check
from .netproxy import Network
from .replica_check import ReplicaSnapshot, range_table, snapshot_log
from .workload import LoadOptions, Shards, Workload, read_all

PLACE_TIMEOUT_S: Final = 30.0
RECOVER_TIMEOUT_S: Final = 60.0
SETTLE_TIMEOUT_S: Final = 120.0
_POLL_S: Final = 0.05
RESTART_ATTEMPTS_MAX: Final = 3

FaultRound = Callable[["ScenarioContext", int], Awaitable[None]]


@dataclass
class ScenarioOptions:
    rounds: int = 1
    seed: int | None = None
    nodes: int = 3
    shards: int = 4
    replication_factor: int = 3
    warmup_s: float = 1.5
    cooldown_s: float = 1.5
    load: LoadOptions = field(default_factory=LoadOptions)
    root_dir: Path | None = None  # None: a temporary dir, removed when the history checks out
    say: Callable[[str], None] = field(default=lambda message: None)
    serve_args: tuple[str, ...] = ()  # more `streamd serve` flags for every node
    node_disk_bytes: int | None = None  # each node's data dir on a tmpfs this big (needs root)
    proxied: bool = False  # every node behind proxies the rounds can cut (netproxy.Network)


@dataclass
class ScenarioResult:
    name: str
    report: CheckReport
    root_dir: Path
    elapsed_s: float
    load: dict[str, Any]
    notes: list[str]
    ranges: list[str]
    figures: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "check": self.report.to_dict(),
            "root_dir": str(self.root_dir),
            "elapsed_s": round(self.elapsed_s, 2),
            "load": self.load,
            "notes": self.notes,
            "figures": self.figures,
        }

    def text(self) -> str:
        lines = [f"{self.name}: {self.report.summary()}", "time from fault to writes resuming:"]
        lines.append(self.report.resume_summary())
        different = [line for line in self.ranges if "DIFFERENT" in line]
        lines.append(
            f"replica ranges compared: {len(self.ranges)}, differing: {len(different)}"
            + "".join(f"\n  {line}" for line in different[:10])
        )
        lines += [f"note: {note}" for note in self.notes]
        lines += [distribution(name, values) for name, values in self.figures.items()]
        lines.append(f"load: {self.load}; elapsed {self.elapsed_s:.1f} s")
        return "\n".join(lines)


def distribution(name: str, values: Sequence[float], bucket_s: float = 0.1) -> str:
    """``name``: count, min, median, p90, p99, max, then a text histogram of ``bucket_s``."""
    ordered = sorted(values)
    if not ordered:
        return f"{name}: no values"

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    lines = [
        f"{name}: n {len(ordered)}, min {ordered[0]:.3f} s, median "
        f"{statistics.median(ordered):.3f} s, p90 {at(0.9):.3f} s, p99 {at(0.99):.3f} s, "
        f"max {ordered[-1]:.3f} s"
    ]
    counts: dict[int, int] = {}
    for value in ordered:
        counts[int(value // bucket_s)] = counts.get(int(value // bucket_s), 0) + 1
    for bucket in range(min(counts), max(counts) + 1):
        count = counts.get(bucket, 0)
        low = bucket * bucket_s
        lines.append(f"  [{low:.1f}, {low + bucket_s:.1f}) s {count:4d} {'#' * count}")
    return "\n".join(lines)


class ScenarioContext:
    """What a fault round works with: the cluster, the stream, the history, a seeded rng."""

    def __init__(
        self,
        cluster: LocalCluster,
        client: Client,
        stream: str,
        shards: Shards,
        history: History,
        rng: random.Random,
        options: ScenarioOptions,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.stream = stream
        self.shards = shards
        self.history = history
        self.rng = rng
        self.options = options
        self.notes: list[str] = []
        self.figures: dict[str, list[float]] = {}
        self.network: Network | None = None  # with ScenarioOptions.proxied

    def say(self, message: str) -> None:
        self.options.say(message)

    def note(self, message: str) -> None:
        """A figure or observation to print with the report."""
        self.notes.append(message)
        self.say(message)

    def figure(self, name: str, value: float) -> None:
        """One measurement of ``name``; the report prints each name's distribution."""
        self.figures.setdefault(name, []).append(value)

    def violation(self, message: str) -> None:
        """A scenario-specific invariant failed (reported with the checker's)."""
        self.history.scenario_violations.append(message)
        self.say(f"VIOLATION: {message}")

    def acked_between(self, start_s: float, end_s: float) -> dict[str, int]:
        """Shard -> acks received in ``[start_s, end_s)`` (monotonic seconds)."""
        counts: dict[str, int] = {}
        for rid, (shard, _seq) in self.history.acked.items():
            if start_s <= self.history.acked_at.get(rid, -1.0) < end_s:
                counts[shard] = counts.get(shard, 0) + 1
        return counts

    def keep_end(self, shard_id: str) -> int:
        """One past the highest offset any ack or reader named on the shard: what no crash
        may take from a majority."""
        best = -1
        for shard, sequence in self.history.acked.values():
            if shard == shard_id:
                best = max(best, parse_sequence(sequence)[1])
        for seen in self.history.observed.get(shard_id, []):
            best = max(best, parse_sequence(seen.sequence_number)[1])
        return best + 1

    def side_load(self, bootstrap: str, prefix: str, options: LoadOptions) -> Workload:
        """A second workload on the stream through ``bootstrap`` only (its own keys)."""
        options.key_prefix, options.readers = prefix, False
        return Workload(
            self.stream,
            self.shards,
            self.history,
            options,
            writer_bootstrap=bootstrap,
            reader_bootstrap=lambda shard_id: bootstrap,
        )

    def replica_dirs(self, node_id: str) -> dict[str, Path]:
        """Shard -> the node's replica log directory (read or cut only while it is stopped)."""
        data_dir = self.cluster.node(node_id).data_dir
        found = {s: _replica_dir(data_dir, s) for s in self.shards.ids}
        return {s: path for s, path in found.items() if path is not None}

    def fault(self, name: str, shards: Sequence[str]) -> None:
        """Record that a fault strikes now, affecting ``shards``."""
        self.history.record_fault(name, time.monotonic(), shards)
        self.say(f"fault: {name} (shards {', '.join(s[-3:] for s in shards) or 'none'})")

    # -- where leaders are -----------------------------------------------------------------------

    async def describe(self) -> list[dict[str, Any]]:
        """describe_stream's shards as the server sent them (``leader``, ``replicas``, ...),
        retried through the bootstrap list while nodes are down."""
        with trio.fail_after(RECOVER_TIMEOUT_S):
            while True:
                try:
                    answer = await self.client.call(
                        "describe_stream", {"stream": self.stream}, timeout_s=2.0
                    )
                    return list(answer["stream"]["shards"])
                except errors.StreamdError as exc:
                    if not exc.retryable:
                        raise
                    await trio.sleep(_POLL_S)

    async def leaders(self) -> dict[str, str | None]:
        return {s["shard_id"]: s.get("leader") for s in await self.describe()}

    async def led_by(self, node_id: str) -> list[str]:
        return sorted(s for s, leader in (await self.leaders()).items() if leader == node_id)

    async def busiest_leader(self, among: Sequence[str] | None = None) -> str:
        """The node leading the most shards (ties broken by the rng)."""
        counts: dict[str, int] = {}
        for leader in (await self.leaders()).values():
            if leader is not None and (among is None or leader in among):
                counts[leader] = counts.get(leader, 0) + 1
        if not counts:
            return self.rng.choice(list(among or self.cluster.nodes))
        most = max(counts.values())
        return self.rng.choice(sorted(n for n, c in counts.items() if c == most))

    async def wait_leaders(self, *, not_on: Sequence[str] = (), timeout_s: float = 30.0) -> float:
        """Wait until every shard has a leader, none on ``not_on``, and its whole replica set;
        returns the seconds waited. Raises TimeoutError."""
        started = time.monotonic()
        rf = self.options.replication_factor
        with trio.fail_after(timeout_s):
            while True:
                shards = await self.describe()
                if all(
                    s.get("leader") is not None
                    and s.get("leader") not in not_on
                    and len(s.get("replicas") or [s.get("leader")]) >= rf
                    for s in shards
                ):
                    return time.monotonic() - started
                await trio.sleep(_POLL_S)

    async def assignments(self) -> dict[str, ShardAssignment]:
        """The controller's documents of the stream's shards, read from etcd (they name the
        members still joining, which describe_stream does not)."""
        store = await EtcdMetaStore.connect(
            parse_cluster_url(self.cluster.cluster_url), namespace=self.cluster.namespace
        )
        try:
            with trio.fail_after(RECOVER_TIMEOUT_S):
                kvs = await store.range(f"{SHARDS_PREFIX}{self.stream}/")
        finally:
            await store.aclose()
        docs = (ShardAssignment.decode(kv.value) for kv in kvs)
        return {doc.shard_id: doc for doc in docs}

    async def wait_node_gone(self, node_id: str, at_s: float, *, timeout_s: float) -> float | None:
        """Wait until the cluster no longer lists ``node_id`` as live (etcd let its lease go and
        the nodes' watch saw it); returns the seconds from ``at_s`` (None: not within
        ``timeout_s``). Polled every 20 ms through ``cluster_nodes``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(errors.StreamdError):
                answer = await self.client.call("cluster_nodes", {}, timeout_s=1.0)
                if node_id not in {n["node_id"] for n in answer["nodes"]}:
                    return time.monotonic() - at_s
            await trio.sleep(0.02)
        return None

    async def wait_acked_after(
        self, at_s: float, shards: Sequence[str], *, timeout_s: float = 30.0
    ) -> float | None:
        """Wait until each of ``shards`` acked a write sent at or after ``at_s``; returns the
        seconds from ``at_s`` (None: not within ``timeout_s``)."""
        wanted = set(shards)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = {
                shard
                for rid, (shard, _seq) in list(self.history.acked.items())[-20_000:]
                if self.history.sent_at.get(rid, -1.0) >= at_s
            }
            if wanted <= done:
                return time.monotonic() - at_s
            await trio.sleep(_POLL_S)
        return None

    # -- faults (blocking cluster calls run in a worker thread) ----------------------------------

    async def kill9(
        self, node_id: str, shards: Sequence[str] | None = None, *, record: bool = True
    ) -> None:
        """kill -9 ``node_id``; the fault (unless ``record`` is False: the caller records
        one of its own) affects the shards it led (or ``shards``)."""
        if record:
            affected = await self.led_by(node_id) if shards is None else list(shards)
            self.fault(f"kill -9 {node_id}", affected)
        await trio.to_thread.run_sync(self.cluster.kill9, node_id)

    async def restart(self, node_id: str) -> None:
        """Start a stopped node again. A start that misses its ready line (20 s: the machine
        may be loaded far beyond its cores) is tried again, up to ``RESTART_ATTEMPTS_MAX``
        times, each noted. Raises ClusterStartError after that."""
        for attempt in range(1, RESTART_ATTEMPTS_MAX + 1):
            try:
                await trio.to_thread.run_sync(self.cluster.restart, node_id)
            except ClusterStartError as exc:
                self.note(f"{node_id} restart attempt {attempt} failed: {str(exc)[:200]}")
                if attempt == RESTART_ATTEMPTS_MAX:
                    raise
                if self.running(node_id):
                    await self.terminate(node_id)
            else:
                self.say(f"{node_id} restarted")
                return

    async def terminate(self, node_id: str) -> None:
        await trio.to_thread.run_sync(self.cluster.terminate, node_id)

    async def sigstop(self, node_id: str) -> None:
        await trio.to_thread.run_sync(self.cluster.sigstop, node_id)

    async def sigcont(self, node_id: str) -> None:
        await trio.to_thread.run_sync(self.cluster.sigcont, node_id)

    def running(self, node_id: str) -> bool:
        return self.cluster.node(node_id).running

    async def fill_disk(self, node_id: str) -> int:
        """Fill ``node_id``'s data disk (``node_disk_bytes``) to the last byte; bytes taken."""
        assert self.options.node_disk_bytes, "fill_disk needs ScenarioOptions.node_disk_bytes"
        return await trio.to_thread.run_sync(disk.fill, self.cluster.root_dir / node_id)

    async def free_disk(self, node_id: str) -> None:
        await trio.to_thread.run_sync(disk.free, self.cluster.root_dir / node_id)

    async def heal(self) -> None:
        """Heal every partition; restart every node that is not running (etcd first)."""
        if self.network is not None:
            self.network.heal()
        if not self.cluster.etcd.running:
            await trio.to_thread.run_sync(self.cluster.etcd.restart)
        for node_id in self.cluster.nodes:
            if not self.running(node_id):
                await self.restart(node_id)


async def run_scenario(
    name: str, fault_round: FaultRound, options: ScenarioOptions
) -> ScenarioResult:
    """Run one scenario (module doc); bounded by its rounds plus the timeouts above."""
    async with trio.open_nursery() as proxies:  # the partition proxies, when asked for
        result = await _run_scenario(name, fault_round, options, proxies)
        proxies.cancel_scope.cancel()
    return result


async def _run_scenario(
    name: str, fault_round: FaultRound, options: ScenarioOptions, proxies: trio.Nursery
) -> ScenarioResult:
    rng = random.Random(options.seed)
    root = options.root_dir or Path(tempfile.mkdtemp(prefix=f"streamd-{name}-"))
    started = time.monotonic()
    stream = f"{name.replace('_', '-')}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}"
    history = History()
    cluster = LocalCluster(
        options.nodes, root_dir=root / "cluster", kinesis=False, extra_args=options.serve_args
    )
    disks = [cluster.root_dir / n for n in cluster.nodes] if options.node_disk_bytes else []
    network = Network(cluster) if options.proxied else None
    if network is not None:
        await network.start(proxies)
    try:
        for mount in disks:
            await trio.to_thread.run_sync(disk.mount_tmpfs, mount, options.node_disk_bytes or 0)
        await trio.to_thread.run_sync(cluster.start)
        options.say(f"cluster up in {time.monotonic() - started:.1f} s under {root}")
        async with connect(cluster.bootstrap, request_timeout_s=5.0) as client:
            shards = await _create(client, stream, options)
            ctx = ScenarioContext(cluster, client, stream, shards, history, rng, options)
            ctx.network = network
            await ctx.wait_leaders(timeout_s=PLACE_TIMEOUT_S)
            workload = await _run_load(ctx, fault_round)
            found = {s: await _final_read(ctx, s) for s in shards.ids}
        await trio.to_thread.run_sync(cluster.stop)
        snapshots = _snapshots(cluster, stream, shards.ids)
        report = check(history, found, replicas=snapshots, replica_count=options.replication_factor)
        ranges = [
            line
            for shard_id, shots in snapshots.items()
            for line in range_table(shots, _end_of(found[shard_id]))
        ]
    finally:
        await trio.to_thread.run_sync(cluster.close)
        for mount in disks:
            await trio.to_thread.run_sync(disk.unmount, mount)
    stats = workload.stats
    if stats.budget_spent_at_s is not None:
        ctx.note(
            f"the load's {options.load.records_max} records ran out "
            f"{stats.budget_spent_at_s - started:.1f} s in: later faults met no writes"
        )
    load = {
        "producer_sent": stats.producer_sent,
        "plain_sent": stats.plain_sent,
        "plain_retries": stats.plain_retries,
        "reader_restarts": stats.reader_restarts,
        "errors": stats.errors,
    }
    elapsed = time.monotonic() - started
    result = ScenarioResult(name, report, root, elapsed, load, ctx.notes, ranges, ctx.figures)
    if report.ok and options.root_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return result


async def _create(client: Client, stream: str, options: ScenarioOptions) -> Shards:
    await client.create_stream(
        stream, options.shards, replication_factor=options.replication_factor
    )
    description: StreamDescription = await client.wait_for_active(stream, PLACE_TIMEOUT_S)
    open_shards = description.open_shards
    return Shards([s.shard_id for s in open_shards], [s.hash_key_start for s in open_shards])


async def _run_load(ctx: ScenarioContext, fault_round: FaultRound) -> Workload:
    options = ctx.options
    leaders = await ctx.leaders()
    endpoints = {node_id: ctx.cluster.endpoint(node_id) for node_id in ctx.cluster.nodes}

    def reader_bootstrap(shard_id: str) -> str:
        others = [e for n, e in endpoints.items() if n != leaders.get(shard_id)]
        return ",".join(others or list(endpoints.values()))

    workload = Workload(
        ctx.stream,
        ctx.shards,
        ctx.history,
        options.load,
        writer_bootstrap=ctx.cluster.bootstrap,
        reader_bootstrap=reader_bootstrap,
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(workload.run, stop)
        await trio.sleep(options.warmup_s)
        for round_index in range(options.rounds):
            ctx.say(f"round {round_index + 1} of {options.rounds}")
            try:
                await fault_round(ctx, round_index)
            except trio.TooSlowError:  # a wait inside the round ran out: the cluster is stuck
                ctx.violation(f"round {round_index + 1} timed out waiting for the cluster")
        await ctx.heal()
        healed_at = time.monotonic()
        waited = await ctx.wait_leaders(timeout_s=RECOVER_TIMEOUT_S)
        resumed = await ctx.wait_acked_after(healed_at, ctx.shards.ids, timeout_s=RECOVER_TIMEOUT_S)
        ctx.say(f"healed: leaders after {waited:.2f} s, writes on every shard after {resumed} s")
        if resumed is None:
            ctx.violation(
                f"writes did not resume on every shard within {RECOVER_TIMEOUT_S} s of the heal"
            )
        await trio.sleep(options.cooldown_s)
        stop.set()  # the workload settles every record's fate, then returns
        nursery.cancel_scope.deadline = trio.current_time() + SETTLE_TIMEOUT_S
    return workload


async def _final_read(ctx: ScenarioContext, shard_id: str) -> list[Seen]:
    """The whole shard; a shard that cannot be read to its end in time is a violation (the
    check then runs on what could be read, or nothing)."""
    try:
        return await read_all(ctx.client, ctx.stream, shard_id, ctx.history)
    except (trio.TooSlowError, errors.StreamdError) as exc:
        ctx.violation(f"final read of {shard_id} failed: {exc!r:.200}")
        return []


def _end_of(records: Sequence[Any]) -> int:
    return parse_sequence(records[-1].sequence_number)[1] + 1 if records else 0


def _replica_dir(node_dir: Path, shard_id: str) -> Path | None:
    """Where ``node_dir`` holds its replica log of the shard (module doc), or None. The
    scenario's cluster holds one stream, so its one stream directory is the one."""
    for stream_dir in sorted((node_dir / layout.STREAMS_DIR).glob("*")):
        replicated = replica_log_dir(node_dir, stream_dir.name, shard_id)
        if replicated.is_dir():
            return replicated
        single = layout.shard_dir(stream_dir, shard_id)
        if single.is_dir() and any(single.glob("*.log")):
            return single  # replication factor 1: the shard's own log
    return None


def _snapshots(
    cluster: LocalCluster, stream: str, shard_ids: Sequence[str]
) -> dict[str, list[ReplicaSnapshot]]:
    out: dict[str, list[ReplicaSnapshot]] = {}
    for shard_id in shard_ids:
        shots = out.setdefault(shard_id, [])
        for node_id, node in cluster.nodes.items():
            directory = _replica_dir(node.data_dir, shard_id)
            if directory is not None:
                shots.append(snapshot_log(directory, node_id))
    return out


# -- the command line every scenario shares --------------------------------------------------------


def main(
    name: str,
    fault_round: FaultRound,
    doc: str | None,
    argv: list[str] | None = None,
    *,
    defaults: ScenarioOptions | None = None,
) -> int:
    """``python -m scenarios.NAME --rounds N --seed S``: run, print the figures, exit 0/1."""
    base = defaults or ScenarioOptions()
    parser = argparse.ArgumentParser(
        prog=f"python -m scenarios.{name}", description=(doc or "").split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=base.rounds)
    parser.add_argument("--seed", type=int, default=base.seed)
    parser.add_argument("--nodes", type=int, default=base.nodes)
    parser.add_argument("--shards", type=int, default=base.shards)
    parser.add_argument("--replication-factor", type=int, default=base.replication_factor)
    parser.add_argument("--producer-rate", type=int, default=base.load.producer_rate)
    parser.add_argument("--plain-rate", type=int, default=base.load.plain_rate)
    parser.add_argument("--records-max", type=int, default=base.load.records_max)
    parser.add_argument("--root-dir", type=Path, default=None, help="kept afterwards")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    load = LoadOptions(**{**base.load.__dict__})
    load.producer_rate, load.plain_rate = args.producer_rate, args.plain_rate
    load.records_max = args.records_max
    options = ScenarioOptions(
        **{
            **base.__dict__,
            "rounds": args.rounds,
            "seed": args.seed if args.seed is not None else random.randrange(1 << 32),
            "nodes": args.nodes,
            "shards": args.shards,
            "replication_factor": args.replication_factor,
            "load": load,
            "root_dir": args.root_dir,
            "say": lambda message: print(f"{name}: {message}", file=sys.stderr, flush=True),
        }
    )
    options.say(f"seed {options.seed}")
    # The offline replica check opens logs in this process: their info lines are noise here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = trio.run(run_scenario, name, fault_round, options)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    if not result.ok:
        print(f"{name}: seed {options.seed}; cluster kept in {result.root_dir}", file=sys.stderr)
        return 1
    return 0
