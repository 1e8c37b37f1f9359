"""Resharding against a real server, on asyncio and trio: split/merge/resize over the wire,
refusals with typed errors, SHARD_END with child shards on reads, the lineage-ordered stream
reader (children only after their parents' ends, per-key order), a seeded random sequence of
operations checked through describe_stream, and the blocking facade.
"""

from __future__ import annotations

import random
from collections import defaultdict

import anyio
import pytest

from streamd_client import Position, connect
from streamd_client.errors import (
    InvalidArgumentError,
    InvalidHashKeyError,
    ResourceInUseError,
    ShardNotFoundError,
    StreamNotFoundError,
)
from streamd_client.model import HASH_KEY_MAX, even_hash_ranges, shard_id_of
from streamd_client.results import Record, StreamDescription
from streamd_client.sync import connect as sync_connect

pytestmark = pytest.mark.anyio

KEYS = [f"key-{i}" for i in range(24)]


def assert_consistent(description: StreamDescription) -> None:
    """Open shards tile the hash space; every parent named is closed; children cover their
    parents' union exactly."""
    expected = 0
    for shard in description.open_shards:
        assert shard.hash_key_start == expected, description
        expected = shard.hash_key_end + 1
    assert expected == HASH_KEY_MAX + 1
    by_id = {s.shard_id: s for s in description.shards}
    born_of: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for shard in description.shards:
        parents = tuple(p for p in (shard.parent_shard_id, shard.adjacent_parent_shard_id) if p)
        for parent in parents:
            assert not by_id[parent].is_open
        if parents:
            born_of[tuple(sorted(parents))].append((shard.hash_key_start, shard.hash_key_end))
    for parents, child_ranges in born_of.items():
        parent_ranges = sorted((by_id[p].hash_key_start, by_id[p].hash_key_end) for p in parents)
        assert min(child_ranges)[0] == parent_ranges[0][0]
        assert max(child_ranges)[1] == parent_ranges[-1][1]
        assert sum(e - s + 1 for s, e in child_ranges) == sum(e - s + 1 for s, e in parent_ranges)


async def put_round(client: object, stream: str, round_no: int) -> None:
    entries = [(f"{key}|{round_no}".encode(), key) for key in KEYS]
    result = await client.put_records(stream, entries)  # type: ignore[attr-defined]
    assert result.failed_count == 0


def assert_lineage_order(records: list[Record], description: StreamDescription) -> None:
    """Per key, rounds strictly increase; every record of a parent precedes its children's."""
    last: dict[str, int] = {}
    for record in records:
        key, round_no = record.data.decode().split("|")
        assert record.partition_key == key
        assert int(round_no) > last.get(key, -1), (key, round_no, last.get(key))
        last[key] = int(round_no)
    positions: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        positions[record.shard_id].append(i)
    for shard in description.shards:
        for parent in (shard.parent_shard_id, shard.adjacent_parent_shard_id):
            if parent and positions[parent] and positions[shard.shard_id]:
                assert max(positions[parent]) < min(positions[shard.shard_id]), (parent, shard)


async def test_split_and_merge_close_parents_and_reads_end_with_their_children(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        await put_round(client, stream_name, 0)
        parent = shard_id_of(0)
        at = 2**127 + 12345
        left, right = await client.split_shard(stream_name, parent, at)
        described = {s.shard_id: s for s in (await client.describe_stream(stream_name)).shards}
        assert not described[parent].is_open and described[parent].ending_sequence is not None
        assert (described[left].hash_key_start, described[left].hash_key_end) == (0, at - 1)
        assert (described[right].hash_key_start, described[right].hash_key_end) == (
            at,
            HASH_KEY_MAX,
        )
        assert described[left].parent_shard_id == parent == described[right].parent_shard_id

        # Reading the parent reaches its end at once, even a long-poll: no record will follow.
        started = anyio.current_time()
        page = await client.read(stream_name, parent, Position.trim_horizon(), wait_ms=5000)
        assert len(page.records) == len(KEYS) and page.shard_end
        assert {c.shard_id for c in page.child_shards} == {left, right}
        assert all(c.parent_shard_ids == (parent,) for c in page.child_shards)
        tail = await client.read(stream_name, parent, page.next_position, wait_ms=5000)
        assert tail.records == [] and tail.shard_end and anyio.current_time() - started < 3
        # A page cut short by a limit has not reached the end.
        first = await client.read(stream_name, parent, Position.trim_horizon(), limit=3)
        assert len(first.records) == 3 and not first.shard_end and first.child_shards == ()

        reader = client.reader(stream_name, parent, follow=True, wait_ms=5000)
        assert len([r async for r in reader]) == len(KEYS)  # a following reader stops too
        assert reader.shard_end and {c.shard_id for c in reader.child_shards} == {left, right}

        await put_round(client, stream_name, 1)
        child = await client.merge_shards(stream_name, right, left)  # either order
        merged = {s.shard_id: s for s in (await client.describe_stream(stream_name)).shards}
        assert (merged[child].parent_shard_id, merged[child].adjacent_parent_shard_id) == (
            right,
            left,
        )
        assert (merged[child].hash_key_start, merged[child].hash_key_end) == (0, HASH_KEY_MAX)
        end_page = await client.read(stream_name, left, Position.trim_horizon())
        assert end_page.shard_end
        assert [(c.shard_id, c.parent_shard_ids) for c in end_page.child_shards] == [
            (child, (right, left))
        ]
        await put_round(client, stream_name, 2)
        description = await client.describe_stream(stream_name)
        assert_consistent(description)
        async with client.stream_reader(stream_name) as stream_reader:
            records = [r async for r in stream_reader]
        assert len(records) == 3 * len(KEYS)
        assert_lineage_order(records, description)
        assert sorted(stream_reader.ended_shards) == sorted([parent, left, right])


async def test_invalid_reshards_get_typed_errors_and_change_nothing(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 4)
        s0, s1, s2, s3 = (shard_id_of(i) for i in range(4))
        ranges = even_hash_ranges(4)
        left, _ = await client.split_shard(stream_name, s0)
        before = await client.describe_stream(stream_name)
        refusals = [
            (InvalidArgumentError, client.split_shard(stream_name, s0)),  # closed
            (InvalidArgumentError, client.split_shard(stream_name, s1, ranges[1][0])),  # first key
            (InvalidArgumentError, client.split_shard(stream_name, s1, ranges[1][1] + 1)),
            (InvalidArgumentError, client.merge_shards(stream_name, s1, s3)),  # not adjacent
            (InvalidArgumentError, client.merge_shards(stream_name, s0, s1)),  # closed
            (InvalidArgumentError, client.merge_shards(stream_name, s2, s2)),
            (InvalidArgumentError, client.resize_stream(stream_name, 11)),  # > double of 5
            (InvalidArgumentError, client.resize_stream(stream_name, 2)),  # < half of 5
            (ShardNotFoundError, client.split_shard(stream_name, shard_id_of(99))),
            (ShardNotFoundError, client.merge_shards(stream_name, s1, shard_id_of(99))),
            (StreamNotFoundError, client.split_shard(stream_name + "-nope", s1)),
            (StreamNotFoundError, client.resize_stream(stream_name + "-nope", 2)),
        ]
        for expected, call in refusals:
            with pytest.raises(expected) as info:
                await call
            assert info.value.code == expected.code and not info.value.retryable
        with pytest.raises(InvalidHashKeyError):  # checked before sending
            await client.split_shard(stream_name, s1, -1)
        assert await client.describe_stream(stream_name) == before
        assert left in {s.shard_id for s in before.open_shards}


async def test_a_reshard_while_a_resize_runs_is_refused_and_progress_is_reported(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 8)
        first, second = shard_id_of(0), shard_id_of(1)
        operations = await client.resize_stream(stream_name, 16)
        assert operations == 8
        # UPDATING was stored before resize_stream answered: the next reshard is refused
        # (unless all 8 steps finished in between, which the server's fair lock prevents).
        with pytest.raises(ResourceInUseError) as info:
            await client.split_shard(stream_name, first)
        assert info.value.code == "RESOURCE_IN_USE" and not info.value.retryable
        description = await client.describe_stream(stream_name)
        if description.status == "UPDATING":
            assert description.reshard is not None
            assert (description.reshard.kind, description.reshard.target) == ("resize", 16)
            assert description.reshard.total == 8
            for call in (
                client.merge_shards(stream_name, first, second),
                client.resize_stream(stream_name, 8),
            ):
                with pytest.raises(ResourceInUseError):
                    await call
        seen: list[StreamDescription] = []
        final = await client.wait_for_active(stream_name, 30, on_progress=seen.append)
    assert final.status == "ACTIVE" and final.reshard is None and seen[-1] == final
    done = [d.reshard.done for d in seen if d.reshard is not None]
    assert done == sorted(done)
    assert [(s.hash_key_start, s.hash_key_end) for s in final.open_shards] == even_hash_ranges(16)
    assert_consistent(final)


async def test_a_random_sequence_of_reshards_keeps_the_map_consistent_under_writes(
    endpoint: str, stream_name: str
) -> None:
    rng = random.Random(4)  # seeded: a failure reproduces
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 3)
        for round_no in range(10):
            await put_round(client, stream_name, round_no)
            description = await client.describe_stream(stream_name)
            open_shards = description.open_shards
            if len(open_shards) > 1 and rng.random() < 0.45:
                i = rng.randrange(len(open_shards) - 1)
                pair = [open_shards[i].shard_id, open_shards[i + 1].shard_id]
                rng.shuffle(pair)
                await client.merge_shards(stream_name, *pair)
            else:
                shard = rng.choice(open_shards)
                at = rng.randint(shard.hash_key_start + 1, shard.hash_key_end)
                await client.split_shard(stream_name, shard.shard_id, rng.choice([at, None]))
            assert_consistent(await client.describe_stream(stream_name))
        await put_round(client, stream_name, 10)
        description = await client.describe_stream(stream_name)
        assert description.status == "ACTIVE" and len(description.shards) > 3
        async with client.stream_reader(stream_name, wait_ms=200) as reader:
            records = [r async for r in reader]
    assert len(records) == 11 * len(KEYS)
    assert_lineage_order(records, description)


async def test_a_following_stream_reader_crosses_splits_and_merges_in_lineage_order(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 2)
        records: list[Record] = []
        expected = 6 * len(KEYS)
        async with client.stream_reader(stream_name, follow=True, wait_ms=300) as reader:

            async def collect() -> None:
                async for record in reader:
                    records.append(record)
                    if len(records) >= expected:
                        return

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(collect)
                for round_no in range(6):
                    await put_round(client, stream_name, round_no)
                    if round_no == 1:
                        await client.split_shard(stream_name, shard_id_of(0))
                    if round_no == 2:
                        await client.split_shard(stream_name, shard_id_of(1))
                    if round_no == 3:
                        await client.merge_shards(stream_name, shard_id_of(3), shard_id_of(4))
                    if round_no == 4:
                        await client.resize_stream(stream_name, 2)
                        await client.wait_for_active(stream_name, 20)
                with anyio.fail_after(20):
                    while len(records) < expected:  # noqa: ASYNC110 - filled by collect()
                        await anyio.sleep(0.02)
        description = await client.describe_stream(stream_name)
    assert len(records) == expected
    assert_lineage_order(records, description)
    assert len({r.shard_id for r in records}) >= 5


def test_the_blocking_facade_reshards_and_reads_across(endpoint: str, stream_name: str) -> None:
    with sync_connect(endpoint) as client:
        client.create_stream(stream_name, 2)
        client.put_records(stream_name, [(b"a|0", "a"), (b"b|0", "b")])
        left, right = client.split_shard(stream_name, shard_id_of(0))
        child = client.merge_shards(stream_name, left, right)
        assert client.resize_stream(stream_name, 4) > 0
        progress: list[StreamDescription] = []
        final = client.wait_for_active(stream_name, 30, on_progress=progress.append)
        assert final.status == "ACTIVE" and len(final.open_shards) == 4 and progress
        client.put_records(stream_name, [(b"a|1", "a"), (b"b|1", "b")])
        records = list(client.iter_stream(stream_name))
        described = client.describe_stream(stream_name)
    assert child in {s.shard_id for s in described.shards}
    assert sorted(r.data for r in records) == [b"a|0", b"a|1", b"b|0", b"b|1"]
    assert_lineage_order(records, described)
