"""Consumer groups across a 3-node cluster (real etcd, real node processes, real TCP): one
coordinator per group, placed by the controller; workers connected to any node; kill -9 of the
coordinator's node and the group goes on on the survivors.

The workers run in this process (GroupWorker on the client library), each connected to a
different node; the nodes are ``streamd.testing.cluster.LocalCluster`` processes. What is
checked record by record: every record acknowledged on a shard whose node survived, before
the kill and after it, was processed by the group, with the bytes it was stored with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.etcd_client import EtcdClient
from streamd.meta.keys import (
    SHARDS_PREFIX,
    CoordinatorPlacement,
    ShardAssignment,
    coordinator_key,
)
from streamd.testing.cluster import LocalCluster
from streamd_client import connect, group_admin
from streamd_client.client import Client
from streamd_client.errors import StreamdError
from streamd_client.group import GroupWorker
from streamd_client.results import PutResult

STREAM = "orders"
GROUP = "billing"
SHARDS = 6
SESSION_MS = 3_000
PLACED_S_MAX = 20.0
PROCESSED_S_MAX = 60.0
UNREADABLE = {"SHARD_UNAVAILABLE", "CONNECTION_LOST", "TIMEOUT"}  # a dead leader's shard

Acked = dict[tuple[str, str], bytes]  # (shard id, sequence number) -> data


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(3, root_dir=tmp_path / "cluster", kinesis=False) as running:
        running.wait_registered(timeout_s=30)
        yield running


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with anyio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state other tasks change
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


async def put(client: Client, first: int, count: int, acked: Acked) -> int:
    """Put records ``first..first+count-1`` server-routed; note the acknowledged ones."""
    entries = [(f"record-{i}".encode(), f"key-{i}") for i in range(first, first + count)]
    try:
        result = await client.put_records(STREAM, entries)
    except StreamdError:
        return 0  # the whole call failed (its node just died): nothing is known to be stored
    stored = 0
    for (data, _), outcome in zip(entries, result.results, strict=True):
        if isinstance(outcome, PutResult):
            acked[(outcome.shard_id, outcome.sequence_number)] = data
            stored += 1
    return stored


async def read_docs(store: EtcdMetaStore) -> tuple[dict[str, str | None], CoordinatorPlacement]:
    leaders = {}
    for kv in await store.range(f"{SHARDS_PREFIX}{STREAM}/"):
        shard = ShardAssignment.decode(kv.value)
        leaders[shard.shard_id] = shard.leader
    kv = await store.get(coordinator_key(STREAM, GROUP))
    assert kv is not None, "the group's first request wrote no placement document"
    return leaders, CoordinatorPlacement.decode(kv.value)


async def run_worker(
    endpoint: str, processed: Acked, workers: dict[str, GroupWorker], name: str
) -> None:
    async with connect(endpoint, request_timeout_s=5) as client:
        async with GroupWorker(
            client,
            STREAM,
            GROUP,
            member_id=name,
            session_timeout_ms=SESSION_MS,
            checkpoint_every_records=25,
            read_wait_ms=200,
            shutdown_timeout_s=2,
        ) as worker:
            workers[name] = worker
            async for batch in worker:
                for record in batch.records:
                    processed[(record.shard_id, record.sequence_number)] = record.data


def test_a_group_of_three_workers_over_three_nodes_survives_kill_9_of_its_coordinator_s_node(
    cluster: LocalCluster,
) -> None:
    anyio.run(_scenario, cluster, backend="trio")


async def _scenario(cluster: LocalCluster) -> None:
    store = EtcdMetaStore(EtcdClient([cluster.etcd.endpoint]), namespace=cluster.namespace)
    acked: Acked = {}
    processed: Acked = {}
    workers: dict[str, GroupWorker] = {}
    try:
        async with connect(cluster.endpoint(1)) as admin, anyio.create_task_group() as tasks:
            # One copy per shard: the dead node's shards stay unreadable, which the lag checks
            # below look at (groups over a replicated stream: scenarios/).
            await admin.create_stream(STREAM, SHARDS, replication_factor=1)
            await admin.wait_for_active(STREAM, PLACED_S_MAX)
            sent = 0
            while sent < 300:
                sent += await put(admin, sent, 100, acked)
            # Three workers, each connected to a different node.
            for k in (1, 2, 3):
                tasks.start_soon(run_worker, cluster.endpoint(k), processed, workers, f"w{k}")
            await wait_until(
                lambda: (
                    len(workers) == 3 and all(len(w.assignment()) == 2 for w in workers.values())
                ),
                PLACED_S_MAX,
                "each of the three workers holds two of the six leases",
            )
            await wait_until(lambda: acked.keys() <= processed.keys(), PROCESSED_S_MAX, "all read")

            leaders, before = await read_docs(store)
            assert before.node_id in cluster.nodes and before.epoch == 1, before
            assert sorted(leaders.values()) == sorted(["node1", "node2", "node3"] * 2), leaders
            dead = before.node_id
            cluster.kill9(dead)
            survivor = next(k for k in (1, 2, 3) if f"node{k}" != dead)
            alive_shards = {s for s, leader in leaders.items() if leader != dead}

            # Keep writing through a surviving node while the group fails over.
            async with connect(cluster.endpoint(survivor)) as producer:
                for _ in range(30):
                    sent += await put(producer, sent, 20, acked)
                    await anyio.sleep(0.1)
                expected = {k: v for k, v in acked.items() if k[0] in alive_shards}
                await wait_until(
                    lambda: expected.keys() <= processed.keys(),
                    PROCESSED_S_MAX,
                    "every acknowledged record on the surviving shards is processed",
                )
                for key, data in sorted(expected.items()):
                    assert processed[key] == data, key

                _, after = await read_docs(store)
                assert after.node_id not in (None, dead) and after.epoch == before.epoch + 1
                # The dead node's worker expires; the group's state is described from any node.
                survivors = {f"w{k}" for k in (1, 2, 3) if f"node{k}" != dead}
                views: list[dict[str, Any]] = []

                async def members() -> set[str]:
                    views.append(await group_admin.describe_group(producer, STREAM, GROUP))
                    return {m["member_id"] for m in views[-1]["members"]}

                with anyio.fail_after(PLACED_S_MAX):
                    while await members() != survivors:  # noqa: ASYNC110 - polls the server
                        await anyio.sleep(0.2)
                final = views[-1]
                checkpointed = {s["shard_id"] for s in final["shards"] if s["checkpoint"]}
                assert alive_shards <= checkpointed, json.dumps(final)[:2000]
                # The lag of every surviving shard is read through its leader (engine.read on
                # the coordinator's node forwards it); the dead node's shards say why not.
                lag = {s["shard_id"]: s for s in final["shards"]}
                for shard_id in alive_shards:
                    assert isinstance(lag[shard_id]["high_watermark"], int), lag[shard_id]
                    assert "lag_error" not in lag[shard_id], lag[shard_id]
                for shard_id in set(leaders) - alive_shards:
                    assert lag[shard_id]["lag_error"] in UNREADABLE, lag[shard_id]
            tasks.cancel_scope.cancel()
    finally:
        await store.aclose()
