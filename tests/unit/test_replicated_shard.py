"""ReplicatedShard (cluster/replicated.py) over three real drivers and FileLogStores in one
process (ReplicaRig, LocalNetwork): what the engine gets from a replicated shard.

* a read page never spans an epoch-start control batch that follows records (the client
  refuses a page with a gap after its first record), and a page starting at one skips it;
* a replica that is not serving answers SHARD_UNAVAILABLE (retryable), never a position error;
* a producer batch reusing a sequence already in the log with another record count is refused
  (OUT_OF_ORDER_SEQUENCE), never answered with the earlier batch's offsets;
* the core epoch a node leads a controller term with (``lead_epoch``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from streamd.catalog import ShardMeta
from streamd.clock import WallClock
from streamd.cluster.replicated import ReplicatedShard, lead_epoch
from streamd.replication.driver import ReplicaDriver
from streamd.storage.filestore import FileLogStore
from streamd.testing.replication_rig import ReplicaRig, replica_rig
from streamd_client import batch as batchfmt
from streamd_client.consumer import decode_read
from streamd_client.errors import OutOfOrderSequenceError, ShardUnavailableError
from streamd_client.model import Position

SHARD = ShardMeta("shardId-000000000000", 0, 0, 2**128 - 1)


def shard_over(rig: ReplicaRig, i: int, driver: ReplicaDriver) -> ReplicatedShard:
    store = rig.stores[i]
    assert isinstance(store, FileLogStore)
    shard = ReplicatedShard(
        "rig", SHARD, rig.dir(i), store, rig.node_ids[i], rig.network, WallClock()
    )
    shard.driver = driver  # the rig's running driver of replica i
    return shard


async def put(shard: ReplicatedShard, count: int, tag: str) -> list[int]:
    offsets = []
    for k in range(count):
        write = shard.enqueue_records([f"{tag}{k}"], [b"\x00" * 16], [f"{tag}{k}".encode()])
        base, _, _ = await write.wait()
        offsets.append(base)
    return offsets


async def test_a_page_never_spans_an_epoch_start_batch(tmp_path: Path) -> None:
    async with replica_rig(tmp_path, files=True, tcp=False) as rig:
        first = shard_over(rig, 0, await rig.elect(0, 1))
        before = await put(first, 5, "a")
        second = shard_over(rig, 1, await rig.elect(1, 2))  # a new leader: an epoch start
        after = await put(second, 5, "b")
        assert after[0] > before[-1] + 1  # the control batch took an offset between them
        keys: list[str] = []
        position = Position.trim_horizon()
        for _ in range(10):
            raw = await second.read(position, 1 << 20, 0)
            page = decode_read(raw, SHARD.shard_id, SHARD.index, None)  # raises on a gap
            keys += [r.partition_key for r in page.records]
            position = page.next_position
            if not page.records and raw.next_offset >= raw.high_watermark:
                break
        assert keys == [f"a{k}" for k in range(5)] + [f"b{k}" for k in range(5)]


async def test_a_replica_that_does_not_serve_answers_shard_unavailable(tmp_path: Path) -> None:
    async with replica_rig(tmp_path, files=True, tcp=False) as rig:
        await rig.elect(0, 1)
        follower = shard_over(rig, 1, rig.drivers[1] or await rig.start(1))
        with trio.fail_after(10), pytest.raises(ShardUnavailableError):
            await follower.read(Position.at_offset(3), 1 << 20, 0)


async def test_a_reused_producer_sequence_with_another_count_is_refused(tmp_path: Path) -> None:
    async with replica_rig(tmp_path, files=True, tcp=False) as rig:
        leader = shard_over(rig, 0, await rig.elect(0, 1))

        def producer_batch(count: int) -> tuple[bytes, batchfmt.BatchHeader]:
            data = batchfmt.encode_batch(
                [f"k{k}" for k in range(count)],
                [b"\x00" * 16] * count,
                [b"x"] * count,
                base_offset=0,
                leader_epoch=0,
                first_arrival_ms=0,
                last_arrival_ms=0,
                producer_id=42,
                producer_seq=0,
            )
            return data, batchfmt.parse_header(data)

        base, count, duplicate = await leader.enqueue_batch(*producer_batch(3)).wait()
        assert (count, duplicate) == (3, False)
        again = await leader.enqueue_batch(*producer_batch(3)).wait()  # a true retry
        assert again == (base, 3, True)
        with pytest.raises(OutOfOrderSequenceError):
            await leader.enqueue_batch(*producer_batch(5)).wait()


def test_lead_epochs_are_unique_per_term_and_restart() -> None:
    assert lead_epoch(1, 0) == 1 << 10
    assert lead_epoch(1, 1 << 10) == (1 << 10) + 1  # led term 1 before a restart
    assert lead_epoch(2, (1 << 10) + 7) == 2 << 10  # a new term starts its own range
    assert lead_epoch(1, 2 << 10) is None  # saw a later term: never lead an older one
    assert lead_epoch(1, (2 << 10) - 1) is None  # the term's range is used up
