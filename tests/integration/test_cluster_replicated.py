"""Replicated shards (issue 13): three real nodes on one real etcd, every shard on all three.

* a replication-factor-3 stream: each shard's ``replicas`` name all three nodes, leaders
  spread; records put through node 1 read back byte-exact through node 3, and each node's
  replica log (read offline after the run) holds the same committed batches;
* kill -9 of a shard leader's node under load: the controller names another replica leader
  (epoch + 1), writes resume on its shards, every acknowledged record is read back, and the
  time from the kill to the first acknowledged write on those shards is printed; the killed
  node restarts as a follower and catches up (its replica log holds every acknowledged record);
* a split and a merge of a replicated stream from other nodes than the writer's: children get
  three replicas, every record is read back once, per-key order holds along the lineage;
* the cluster default is 3, and Kinesis CreateStream sets it with the tag
  ``streamd:replication-factor``;
* etcd killed for 3 s: the leaders keep acknowledging writes, no node leaves, nothing is lost;
* through the Kinesis gateway, sequence numbers and shard iterators taken before a leader's
  kill -9 read the same records after the failover; the stream deleted while that node was
  down is gone from its disk when it starts again;
* refusals: replication factor 0 or 6 answer INVALID_ARGUMENT.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from streamd import layout
from streamd.cluster.replicated import replica_log_dir
from streamd.storage.config import LogConfig
from streamd.storage.filestore import FileLogStore
from streamd.testing.cluster import LocalCluster
from streamd_client import Client, Position, connect
from streamd_client.errors import InvalidArgumentError, StreamdError

from .aws import kinesis_client

PLACE_TIMEOUT_S = 20.0
RESUME_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(3, root_dir=tmp_path_factory.mktemp("rf3")) as running:
        yield running


def stream_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def described_shards(client: Client, stream: str) -> list[dict[str, object]]:
    answer = await client.call("describe_stream", {"stream": stream})
    shards: list[dict[str, object]] = answer["stream"]["shards"]
    return shards


async def wait_served(client: Client, stream: str, shard_count: int) -> dict[str, str]:
    """Wait until every shard has three replicas and a leader; shard id -> leader."""
    with trio.fail_after(PLACE_TIMEOUT_S):
        while True:
            shards = await described_shards(client, stream)
            if len(shards) == shard_count and all(
                s.get("leader") and len(s.get("replicas") or []) == 3 for s in shards
            ):
                return {str(s["shard_id"]): str(s["leader"]) for s in shards}
            await trio.sleep(0.05)


async def put_until_acked(client: Client, stream: str, key: str, data: bytes) -> tuple[str, str]:
    """Put one record, retrying retryable errors; (shard id, sequence number)."""
    with trio.fail_after(RESUME_TIMEOUT_S):
        while True:
            try:
                result = await client.put_record(stream, data, key)
                return result.shard_id, result.sequence_number
            except StreamdError as exc:
                if not exc.retryable:
                    raise
                await trio.sleep(0.02)


async def read_all(endpoint: str, stream: str, shard_ids: list[str]) -> dict[str, list[tuple]]:
    found: dict[str, list[tuple]] = {}
    async with connect(endpoint) as client:
        for shard_id in shard_ids:
            rows: list[tuple] = []
            position = Position.trim_horizon()
            with trio.fail_after(RESUME_TIMEOUT_S):
                while True:
                    try:
                        page = await client.read(stream, shard_id, position)
                    except StreamdError as exc:
                        if not exc.retryable:
                            raise
                        await trio.sleep(0.05)
                        continue
                    rows += [(r.sequence_number, r.partition_key, r.data) for r in page.records]
                    if not page.records:
                        break
                    position = page.next_position
            found[shard_id] = rows
    return found


def replica_batches(data_dir: Path, shard_id: str) -> list[tuple]:
    """Every batch of one node's replica log of ``shard_id`` (of the one live stream that has
    such a shard), offline: (offset, epoch, control, payload)."""
    streams = [d for d in (data_dir / layout.STREAMS_DIR).iterdir() if d.is_dir()]
    found = [
        replica_log_dir(data_dir, d.name, shard_id)
        for d in streams
        if replica_log_dir(data_dir, d.name, shard_id).is_dir()
    ]
    assert len(found) == 1, found
    store = FileLogStore(found[0], LogConfig(fsync=True))
    try:
        out, offset = [], 0
        while offset < store.log_end():
            for batch in store.read(offset, 64):
                out.append((batch.base_offset, batch.epoch, batch.control, batch.payload))
                offset = batch.next_offset
        return out
    finally:
        store.close(clean=False)


async def test_refusals(cluster: LocalCluster) -> None:
    async with connect(cluster.endpoint(1)) as client:
        for rf in (0, 6):
            with pytest.raises(InvalidArgumentError, match="replication factor"):
                await client.create_stream(stream_name("bad"), 1, replication_factor=rf)


async def test_replication_factor_defaults_to_3_and_a_kinesis_tag_sets_it(
    cluster: LocalCluster,
) -> None:
    kinesis = kinesis_client(cluster.node(2))
    tagged, plain = stream_name("tag1"), stream_name("dflt")
    kinesis.create_stream(StreamName=tagged, ShardCount=1, Tags={"streamd:replication-factor": "1"})
    kinesis.create_stream(StreamName=plain, ShardCount=1)
    async with connect(cluster.bootstrap) as client:
        with trio.fail_after(PLACE_TIMEOUT_S):
            while True:
                one = await described_shards(client, tagged)
                three = await described_shards(client, plain)
                if one[0].get("replicas") and len(three[0].get("replicas") or []) == 3:
                    break
                await trio.sleep(0.05)
        assert len(one[0]["replicas"]) == 1
        for name in (tagged, plain):
            await client.delete_stream(name)


async def test_split_and_merge_a_replicated_stream(cluster: LocalCluster) -> None:
    """A split and a merge of an RF 3 stream, run through node 2 while node 1 takes writes:
    parents close at their ending offsets, children get three replicas, every record put
    before and after is read back once, in order per key along the lineage."""
    name = stream_name("resh")
    async with connect(cluster.bootstrap) as client:
        await client.create_stream(name, 2, replication_factor=3)
        first = min(await wait_served(client, name, 2))
        acked: dict[str, list[tuple]] = {}
        for i in range(60):
            shard_id, sequence = await put_until_acked(client, name, f"k{i % 7}", bytes([i]))
            acked.setdefault(shard_id, []).append((sequence, f"k{i % 7}", bytes([i])))
    async with connect(cluster.endpoint(2)) as admin:
        children = await admin.split_shard(name, first)
        assert len(children) == 2
    async with connect(cluster.bootstrap) as client:
        served = await wait_served(client, name, 4)
        for i in range(60, 120):
            shard_id, sequence = await put_until_acked(client, name, f"k{i % 7}", bytes([i]))
            acked.setdefault(shard_id, []).append((sequence, f"k{i % 7}", bytes([i])))
        assert set(children) <= set(acked), "the children took writes"
    async with connect(cluster.endpoint(3)) as admin:
        merged = await admin.merge_shards(name, children[0], children[1])
    async with connect(cluster.bootstrap) as client:
        served = await wait_served(client, name, 5)
        for i in range(120, 150):
            shard_id, sequence = await put_until_acked(client, name, f"k{i % 7}", bytes([i]))
            acked.setdefault(shard_id, []).append((sequence, f"k{i % 7}", bytes([i])))
        assert merged in acked
        found = await read_all(cluster.endpoint(1), name, list(served))
        await client.delete_stream(name)  # the offline check of the last test finds one stream
    for shard_id, rows in acked.items():
        assert sorted(found[shard_id], key=lambda r: int(r[0])) == rows, shard_id
    # Per key, along the lineage (parent before children before the merged shard): put order.
    lineage = [first, *children, merged]
    for key in {row[1] for rows in acked.values() for row in rows}:
        seen = [row[2] for s in lineage for row in found.get(s, []) if row[1] == key]
        assert seen == sorted(seen), key


async def test_writes_go_on_while_etcd_is_killed(cluster: LocalCluster) -> None:
    """etcd is not on the write path: with it killed, the leaders of a replicated stream keep
    acknowledging writes; when it is back (it extends the leases), every node is still a
    member and nothing acknowledged is lost."""
    name = stream_name("noetcd")
    async with connect(cluster.bootstrap) as client:
        await client.create_stream(name, 3, replication_factor=3)
        shards = list(await wait_served(client, name, 3))
        acked: dict[str, list[tuple]] = {s: [] for s in shards}

        async def write_for(seconds: float, tag: str) -> int:
            began, count = time.monotonic(), 0
            while time.monotonic() - began < seconds:
                key, data = f"{tag}{count % 11}", b"%s%d" % (tag.encode(), count)
                shard_id, sequence = await put_until_acked(client, name, key, data)
                acked[shard_id].append((sequence, key, data))
                count += 1
            return count

        with_etcd = await write_for(3.0, "a")
        outage = {s: len(rows) for s, rows in acked.items()}
        cluster.etcd.kill9()
        try:
            without = await write_for(3.0, "b")
        finally:
            cluster.etcd.restart()
        outage = {s: len(rows) - outage[s] for s, rows in acked.items()}
        print(f"writes in 3 s: {with_etcd} with etcd, {without} with etcd killed")
        assert all(outage.values()), outage  # every shard's leader took writes meanwhile
        assert without >= with_etcd / 4  # a busy machine is noisy; a stall is not this
        await trio.sleep(2.0)
        assert cluster.exited() == {}, "a node left the cluster"
        found = await read_all(cluster.endpoint(2), name, shards)
        for shard_id, rows in acked.items():
            assert sorted(found[shard_id], key=lambda r: int(r[0])) == rows, shard_id
        await client.delete_stream(name)


def test_kinesis_iterators_and_sequence_numbers_stay_valid_across_failover(
    cluster: LocalCluster,
) -> None:
    """Through a gateway on a node that does not lead the shard: sequence numbers and shard
    iterators taken before the leader's kill -9 still read, after it, exactly the records they
    named, in order, with the records written after the failover behind them."""
    name = stream_name("rf3-kinesis")

    async def leader_of_the_shard() -> str:
        async with connect(cluster.bootstrap) as client:
            await client.create_stream(name, 1, replication_factor=3)
            return (await wait_served(client, name, 1))["shardId-000000000000"]

    def stream_dirs(node: str) -> set[str]:
        return {d.name for d in (cluster.node(node).data_dir / layout.STREAMS_DIR).iterdir()}

    existing = set().union(*(stream_dirs(n) for n in ("node1", "node2", "node3")))
    leader = trio.run(leader_of_the_shard)
    (stream_id,) = stream_dirs(leader) - existing
    gateway = next(n for n in ("node1", "node2", "node3") if n != leader)
    kinesis = kinesis_client(cluster.node(gateway))
    shard = "shardId-000000000000"
    before = [f"before-{i}".encode() for i in range(50)]
    put = kinesis.put_records(
        StreamName=name, Records=[{"Data": d, "PartitionKey": "k"} for d in before]
    )
    assert put["FailedRecordCount"] == 0
    sequences = [r["SequenceNumber"] for r in put["Records"]]

    def iterator(kind: str, **more: str) -> str:
        got = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType=kind, **more
        )
        return str(got["ShardIterator"])

    at_tenth = iterator("AT_SEQUENCE_NUMBER", StartingSequenceNumber=sequences[10])
    after_tenth = iterator("AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=sequences[10])
    first_page = kinesis.get_records(ShardIterator=iterator("TRIM_HORIZON"), Limit=20)
    assert [r["Data"] for r in first_page["Records"]] == before[:20]
    mid_stream = first_page["NextShardIterator"]

    cluster.kill9(leader)
    after: list[bytes] = []
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while len(after) < 30:  # retried through the failover, one record at a time
        data = f"after-{len(after)}".encode()
        try:
            kinesis.put_record(StreamName=name, Data=data, PartitionKey="k")
            after.append(data)
        except kinesis.exceptions.ClientError:
            assert time.monotonic() < deadline, "writes did not resume after the failover"
            time.sleep(0.05)

    def read_on(start: str) -> list[dict[str, object]]:
        records: list[dict[str, object]] = []
        position = start
        for _ in range(50):
            page = kinesis.get_records(ShardIterator=position, Limit=25)
            records += page["Records"]
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            position = page["NextShardIterator"]
        return records

    everything = before + after
    assert [r["Data"] for r in read_on(mid_stream)] == everything[20:]
    from_tenth = read_on(at_tenth)
    assert from_tenth[0]["SequenceNumber"] == sequences[10]
    assert [r["Data"] for r in from_tenth] == everything[10:]
    assert [r["Data"] for r in read_on(after_tenth)] == everything[11:]
    kinesis.delete_stream(StreamName=name)
    cluster.restart(leader)
    cluster.wait_registered()
    # Deleted while the leader's node was down: it finds the stream gone at its start and
    # trashes the stream's files (Engine.remove_unknown_streams).
    assert stream_id not in stream_dirs(leader)


async def test_replicated_writes_survive_killing_a_leader(cluster: LocalCluster) -> None:
    name = stream_name("rf3")
    shard_count = 3
    async with connect(cluster.bootstrap) as client:
        await client.create_stream(name, shard_count, replication_factor=3)
        leaders = await wait_served(client, name, shard_count)
        assert len(set(leaders.values())) == 3, leaders  # one leader per node
        acked: dict[str, list[tuple]] = {s: [] for s in leaders}
        for i in range(150):
            key, data = f"k{i % 17}", b"\x00\xff" + i.to_bytes(4, "big")
            shard_id, sequence = await put_until_acked(client, name, key, data)
            acked[shard_id].append((sequence, key, data))
        victim_shard = min(leaders)
        victim = leaders[victim_shard]
        killed_at = time.monotonic()
        cluster.kill9(victim)
        resumed_s: float | None = None
        for i in range(150, 300):
            key, data = f"k{i % 17}", b"\x00\xff" + i.to_bytes(4, "big")
            shard_id, sequence = await put_until_acked(client, name, key, data)
            acked[shard_id].append((sequence, key, data))
            if shard_id == victim_shard and resumed_s is None:
                resumed_s = time.monotonic() - killed_at
        assert resumed_s is not None
        print(f"writes on {victim_shard} resumed {resumed_s:.2f} s after kill -9 of {victim}")
        moved = await wait_served(client, name, shard_count)
        assert moved[victim_shard] != victim
    survivor = next(n for n in ("node1", "node2", "node3") if n != victim)
    found = await read_all(cluster.endpoint(survivor), name, list(leaders))
    for shard_id, rows in acked.items():
        assert sorted(found[shard_id], key=lambda r: int(r[0])) == sorted(
            rows, key=lambda r: int(r[0])
        ), shard_id
    # The killed node comes back as a follower and catches up: its replica holds every batch.
    cluster.restart(victim)
    async with connect(cluster.bootstrap) as client:
        await wait_served(client, name, shard_count)
        for i in range(20):  # writes after the restart reach it as a follower too
            await put_until_acked(client, name, f"after-{i}", b"x")
    await trio.sleep(1.0)
    cluster.stop()  # the last test of the module: the offline check needs every node stopped
    copies = {
        node: replica_batches(cluster.node(node).data_dir, victim_shard)
        for node in ("node1", "node2", "node3")
    }
    shortest = min(len(batches) for batches in copies.values())
    common = copies[victim][:shortest]
    for node, batches in copies.items():
        assert batches[:shortest] == common, node  # the same batches, byte for byte
    # One put_record is one batch of one record: the restarted node caught up on all of them.
    caught_up = [b for b in copies[victim] if not b[2]]
    assert len(caught_up) >= len(acked[victim_shard])
