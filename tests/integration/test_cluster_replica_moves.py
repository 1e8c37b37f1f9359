"""Replica set changes on real nodes (issue 13): four nodes on one etcd, an RF 3 stream.

In one cluster, in order (each step leaves the cluster as the next one needs it):

* preferred leaders: kill -9 of a shard's preferred leader moves its leadership away; once the
  node is back (and live for ``--preferred-leader-delay-s``), it leads the shard again;
* ``streamd cluster move-replica``: a follower's replica moves to the node that held none; the
  command prints its progress (joining, done), the new replica votes;
* re-replication: a node killed for good has its replicas replaced after
  ``--replica-grace-s``; the shards are on three live voters again;
* ``streamd cluster drain``: every replica and leadership leaves the drained node, with
  progress printed; ``undrain`` ends it;
* throughout, records are put; at the end every acknowledged record reads back once, and
  each shard's final replicas hold byte-identical logs up to the shortest (read offline).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
import trio

from streamd.config import parse_cluster_url
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.keys import SHARDS_PREFIX, ShardAssignment
from streamd.testing.cluster import LocalCluster
from streamd_client import connect

from .test_cluster_replicated import put_until_acked, read_all, replica_batches

GRACE_S = 8.0
CHANGE_TIMEOUT_S = 60.0
SHARDS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    args = ["--replica-grace-s", str(GRACE_S), "--preferred-leader-delay-s", "1"]
    with LocalCluster(4, root_dir=tmp_path_factory.mktemp("moves"), extra_args=args) as running:
        yield running


async def assignments(cluster: LocalCluster, stream: str) -> dict[str, ShardAssignment]:
    store = await EtcdMetaStore.connect(
        parse_cluster_url(cluster.cluster_url), namespace=cluster.namespace
    )
    try:
        with trio.fail_after(10):
            kvs = await store.range(f"{SHARDS_PREFIX}{stream}/")
    finally:
        await store.aclose()
    docs = (ShardAssignment.decode(kv.value) for kv in kvs)
    return {doc.shard_id: doc for doc in docs}


async def wait_for(cluster: LocalCluster, stream: str, done: object, what: str) -> dict:
    """Poll the shard documents until ``done(docs)`` holds."""
    with trio.fail_after(CHANGE_TIMEOUT_S):
        while True:
            docs = await assignments(cluster, stream)
            if len(docs) == SHARDS and done(docs):  # type: ignore[operator]
                return docs
            await trio.sleep(0.2)
    raise AssertionError(what)  # pragma: no cover (fail_after raises first)


def whole(doc: ShardAssignment, live: set[str]) -> bool:
    return not doc.joining and len(doc.replicas) == 3 and set(doc.replicas) <= live


async def cli(cluster: LocalCluster, *args: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "streamd", "cluster", *args, "--cluster", cluster.cluster_url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr.decode())
    return out


async def test_preferred_leaders_moves_re_replication_and_drain(cluster: LocalCluster) -> None:
    stream = f"moves-{uuid.uuid4().hex[:8]}"
    nodes = {"node1", "node2", "node3", "node4"}
    acked: dict[str, list[tuple]] = {}
    counter = 0

    async def put_some(client: object, n: int = 40) -> None:
        nonlocal counter
        for _ in range(n):
            key, data = f"k{counter % 13}", counter.to_bytes(4, "big")
            shard_id, sequence = await put_until_acked(client, stream, key, data)  # type: ignore[arg-type]
            acked.setdefault(shard_id, []).append((sequence, key, data))
            counter += 1

    async with connect(cluster.bootstrap) as client:
        await client.create_stream(stream, SHARDS, replication_factor=3)
        docs = await wait_for(
            cluster, stream, lambda d: all(whole(s, nodes) for s in d.values()), "placed"
        )
        await put_some(client)

        # Preferred leaders: the first replica leads; killed, another leads; back, it leads again.
        shard_id = min(docs)
        preferred = docs[shard_id].replicas[0]
        assert docs[shard_id].leader == preferred
        cluster.kill9(preferred)
        await wait_for(
            cluster, stream, lambda d: d[shard_id].leader not in (None, preferred), "failed over"
        )
        await put_some(client)
        cluster.restart(preferred)
        await wait_for(cluster, stream, lambda d: d[shard_id].leader == preferred, "led again")
        await put_some(client)

        # move-replica: a follower of the shard moves to the node that holds none of it.
        docs = await assignments(cluster, stream)
        before = docs[shard_id]
        source = before.replicas[-1]
        (target,) = nodes - set(before.replicas)
        out = await cli(cluster, "move-replica", stream, shard_id, "--from", source, "--to", target)
        assert "requested" in out and "done" in out, out
        print(out)
        docs = await assignments(cluster, stream)
        assert target in docs[shard_id].voters and source not in docs[shard_id].replicas
        assert docs[shard_id].leader_epoch >= before.leader_epoch + 2  # joined, then voted
        await put_some(client)

        # Re-replication: a node killed for good is replaced after the grace.
        lost = next(
            n for n in sorted(nodes) if n in docs[shard_id].replicas and n != docs[shard_id].leader
        )
        killed_at = trio.current_time()
        cluster.kill9(lost)
        live = nodes - {lost}
        await put_some(client)
        await wait_for(
            cluster, stream, lambda d: all(whole(s, live) for s in d.values()), "re-replicated"
        )
        took_s = trio.current_time() - killed_at
        print(f"{lost} killed: its replicas replaced and voting {took_s:.1f} s later")
        assert took_s >= GRACE_S  # not before the grace
        await put_some(client)

        # Drain: with the lost node back, drain another; nothing stays on it.
        cluster.restart(lost)
        drained = next(n for n in sorted(live) if n != lost)
        out = await cli(cluster, "drain", drained)
        assert f"drain {drained}: started" in out and "done" in out, out
        print(out)
        docs = await assignments(cluster, stream)
        assert all(drained not in s.replicas and whole(s, nodes) for s in docs.values()), docs
        await put_some(client)
        assert "ended" in await cli(cluster, "undrain", drained)

    survivor = next(n for n in sorted(nodes) if n != drained)
    found = await read_all(cluster.endpoint(survivor), stream, sorted(acked))
    for shard, rows in acked.items():
        assert sorted(found[shard], key=lambda r: int(r[0])) == sorted(
            rows, key=lambda r: int(r[0])
        )
    await trio.sleep(1.0)  # the followers' last appends
    cluster.stop()
    for shard, doc in docs.items():
        copies = {n: replica_batches(cluster.node(n).data_dir, shard) for n in doc.replicas}
        shortest = min(len(b) for b in copies.values())
        assert shortest >= len(acked.get(shard, [])), shard  # one batch per put, at least
        common = next(iter(copies.values()))[:shortest]
        for node, batches in copies.items():
            assert batches[:shortest] == common, (shard, node)
