"""Resharding from any node of a cluster (real etcd, real node processes, real TCP).

The node asked runs the reshard, sealing parents other nodes lead through the internal op
seal_shard (docs/cluster.md, "Resharding from any node"): a split through a node that does not
lead the parent, then a merge of its two children wherever they were placed, then a resize.
Records put before and after read back, every one, through a node that leads none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from streamd.testing.cluster import LocalCluster
from streamd_client import connect
from streamd_client.client import Client
from streamd_client.model import Position

STREAM = "reshaped"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(3, root_dir=tmp_path / "cluster", kinesis=False) as running:
        running.wait_registered(timeout_s=30)
        yield running


async def leaders(client: Client) -> dict[str, str | None]:
    described = await client.describe_stream(STREAM)
    return {s.shard_id: s.leader_address for s in described.shards}


async def wait_placed(client: Client) -> dict[str, str | None]:
    with anyio.fail_after(20):
        while True:
            described = await client.describe_stream(STREAM)  # one view: no race between two
            found = {s.shard_id: s.leader_address for s in described.shards}
            open_ids = {s.shard_id for s in described.shards if s.ending_sequence is None}
            if described.status == "ACTIVE" and all(found[s] for s in open_ids):
                return found
            await anyio.sleep(0.05)


async def read_all(client: Client, shard_ids: list[str]) -> list[bytes]:
    got: list[bytes] = []
    for shard_id in shard_ids:
        position = Position.trim_horizon()
        while True:
            result = await client.read(STREAM, shard_id, position)
            got += [r.data for r in result.records]
            if not result.records:
                break
            position = result.next_position
    return got


def test_split_through_another_node_then_merge_across_nodes_and_resize(
    cluster: LocalCluster,
) -> None:
    endpoints = [cluster.endpoint(k) for k in (1, 2, 3)]

    async def main() -> None:
        async with connect(endpoints[0]) as admin:
            await admin.create_stream(STREAM, 3, 24)
            placed = await wait_placed(admin)
            parent = "shardId-000000000000"
            elsewhere = next(e for e in endpoints if e != placed[parent])
            before = [(f"before-{i}".encode(), f"k{i}") for i in range(60)]
            assert (await admin.put_records(STREAM, before)).failed_count == 0
        async with connect(elsewhere) as other:  # does not lead the parent: seals it there
            children = await other.split_shard(STREAM, parent)
            assert len(children) == 2
            placed = await wait_placed(other)
            after = [(f"after-{i}".encode(), f"k{i}") for i in range(60)]
            assert (await other.put_records(STREAM, after)).failed_count == 0
            described = await other.describe_stream(STREAM)
            every = [s.shard_id for s in described.shards]
            got = await read_all(other, every)
            assert sorted(got) == sorted(d for d, _ in before + after)
            left, right = children
            merged = await other.merge_shards(STREAM, left, right)  # wherever the two are led
            assert merged not in every
            assert await other.resize_stream(STREAM, 4) > 0
            placed = await wait_placed(other)
            described = await other.describe_stream(STREAM)
            assert len([s for s in described.shards if s.ending_sequence is None]) == 4
            got = await read_all(other, [s.shard_id for s in described.shards])
            assert sorted(got) == sorted(d for d, _ in before + after)

    anyio.run(main, backend="trio")
