"""The client library against a real server, on asyncio and on trio: puts, the producer,
readers and positions, long-poll wake-up, retention, and the blocking facade."""

from __future__ import annotations

import time

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, PutRecordsEntry, PutResult, RecordFailure, connect
from streamd_client.errors import StreamNotFoundError
from streamd_client.model import parse_sequence
from streamd_client.sync import connect as sync_connect

pytestmark = pytest.mark.anyio


async def test_put_record_then_read_it_back(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 2)
        result = await client.put_record(stream_name, b"\x00hello\xff", "user-1")
        page = await client.read(stream_name, result.shard_id, Position.trim_horizon())
        assert [(r.partition_key, r.data) for r in page.records] == [("user-1", b"\x00hello\xff")]
        assert page.records[0].sequence_number == result.sequence_number
        assert page.high_watermark == 1 and page.millis_behind == 0
        await client.delete_stream(stream_name)


async def test_put_records_routes_by_key_and_explicit_hash(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 4)
        description = await client.describe_stream(stream_name)
        entries = [PutRecordsEntry(f"r{i}".encode(), f"key-{i}") for i in range(100)]
        entries += [
            PutRecordsEntry(b"low", "x", explicit_hash_key=0),
            PutRecordsEntry(b"high", "x", explicit_hash_key=2**128 - 1),
        ]
        result = await client.put_records(stream_name, entries)
        assert result.failed_count == 0
        assert all(isinstance(r, PutResult) for r in result.results)
        ok_results = [r for r in result.results if isinstance(r, PutResult)]
        assert ok_results[-2].shard_id == description.shards[0].shard_id
        assert ok_results[-1].shard_id == description.shards[-1].shard_id
        # Sequence numbers name their shard and are unique in the stream.
        assert len({r.sequence_number for r in ok_results}) == len(ok_results)
        for r in ok_results:
            index, _ = parse_sequence(r.sequence_number)
            assert r.shard_id == f"shardId-{index:012d}"
        assert not any(isinstance(r, RecordFailure) for r in result.results)


async def test_producer_then_reader_in_order(endpoint: str, stream_name: str) -> None:
    count = 5000
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 3)
        async with client.producer(stream_name, linger_ms=2) as producer:
            pendings = [await producer.put(f"{i}".encode(), f"k{i % 7}") for i in range(count)]
            await producer.flush()
            results = [await p.result() for p in pendings]
        assert producer.stats.acked_records == count and producer.stats.failed_records == 0
        seen: dict[str, list[int]] = {}
        for shard in (await client.describe_stream(stream_name)).shards:
            async for record in client.reader(stream_name, shard.shard_id):
                seen.setdefault(record.partition_key, []).append(int(record.data))
        assert sum(len(v) for v in seen.values()) == count
        for key, values in seen.items():
            assert values == sorted(values), f"key {key} out of order"
        assert len({r.sequence_number for r in results}) == count


async def test_positions(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        shard = (await client.describe_stream(stream_name)).shards[0].shard_id
        before_ms = int(time.time() * 1000) - 1
        first = await client.put_record(stream_name, b"1", "k")
        second = await client.put_record(stream_name, b"2", "k")
        await client.put_record(stream_name, b"3", "k")

        async def datas(position: Position) -> list[bytes]:
            return [r.data for r in (await client.read(stream_name, shard, position)).records]

        assert await datas(Position.trim_horizon()) == [b"1", b"2", b"3"]
        assert await datas(Position.at_sequence(second.sequence_number)) == [b"2", b"3"]
        assert await datas(Position.after_sequence(first.sequence_number)) == [b"2", b"3"]
        assert await datas(Position.latest()) == []
        assert await datas(Position.at_timestamp(before_ms)) == [b"1", b"2", b"3"]
        assert await datas(Position.at_timestamp(int(time.time() * 1000) + 60_000)) == []
        limited = await client.read(stream_name, shard, Position.trim_horizon(), limit=2)
        assert [r.data for r in limited.records] == [b"1", b"2"]
        assert [
            r.data for r in (await client.read(stream_name, shard, limited.next_position)).records
        ] == [b"3"]


async def test_long_poll_read_wakes_on_commit(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        shard = (await client.describe_stream(stream_name)).shards[0].shard_id
        woke_after_s: list[float] = []

        async def waiter() -> None:
            started = time.monotonic()
            page = await client.read(stream_name, shard, Position.latest(), wait_ms=10_000)
            woke_after_s.append(time.monotonic() - started)
            assert [r.data for r in page.records] == [b"wake up"]

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.3)
                await client.put_record(stream_name, b"wake up", "k")
        # Woken by the commit, long before the 10 s wait ran out.
        assert 0.25 <= woke_after_s[0] < 3.0


async def test_long_poll_times_out_empty(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        shard = (await client.describe_stream(stream_name)).shards[0].shard_id
        started = time.monotonic()
        page = await client.read(stream_name, shard, Position.latest(), wait_ms=300)
        assert page.records == [] and time.monotonic() - started >= 0.25


async def test_following_reader_gets_records_as_they_commit(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        shard = (await client.describe_stream(stream_name)).shards[0].shard_id
        got: list[bytes] = []

        async def follow() -> None:
            async for record in client.reader(stream_name, shard, follow=True, wait_ms=1000):
                got.append(record.data)
                if len(got) == 20:
                    return

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                for i in range(20):
                    await client.put_record(stream_name, str(i).encode(), "k")
                    await anyio.sleep(0.01)
        assert got == [str(i).encode() for i in range(20)]


async def test_retention_update(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1, retention_hours=48)
        assert (await client.describe_stream(stream_name)).retention_hours == 48
        await client.update_retention(stream_name, 8760)
        assert (await client.describe_stream(stream_name)).retention_hours == 8760
        await client.update_retention(stream_name, 24)
        assert (await client.describe_stream(stream_name)).retention_hours == 24


async def test_stream_name_reusable_after_delete(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        await client.put_record(stream_name, b"old", "k")
        await client.delete_stream(stream_name)
        assert stream_name not in await client.list_streams()
        await client.create_stream(stream_name, 1)
        shard = (await client.describe_stream(stream_name)).shards[0].shard_id
        page = await client.read(stream_name, shard, Position.trim_horizon())
        assert page.records == [] and page.high_watermark == 0


def test_blocking_facade(server: ServerProcess, stream_name: str) -> None:
    with sync_connect(server.endpoint) as client:
        client.create_stream(stream_name, 2)
        result = client.put_record(stream_name, b"sync", "k")
        page = client.read(stream_name, result.shard_id, Position.trim_horizon())
        assert [r.data for r in page.records] == [b"sync"]
        with client.producer(stream_name) as producer:
            pending = [producer.put(b"p%d" % i, "k") for i in range(100)]
            producer.flush()
        assert all(p.result().shard_id == result.shard_id for p in pending)
        client.delete_stream(stream_name)


async def test_largest_read_fits_a_frame(endpoint: str, stream_name: str) -> None:
    """READ_BYTES_MAX (10 MiB) is a valid max_bytes; the answer must still cross the wire."""
    from streamd_client.model import READ_BYTES_MAX

    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        for _ in range(3):  # 12 MiB of 1 MiB records, in 4 MiB requests
            await client.put_records(stream_name, [(b"x" * (1 << 20), "k")] * 4)
        shard = (await client.describe_stream(stream_name)).shards[0].shard_id
        page = await client.read(
            stream_name, shard, Position.trim_horizon(), max_bytes=READ_BYTES_MAX
        )
        assert [r.data for r in page.records] == [b"x" * (1 << 20)] * len(page.records)
        assert page.records  # compressed batches: all 12 may fit, but never a dropped frame
        await client.delete_stream(stream_name)


async def test_wait_for_active_waits_out_a_stream_created_a_moment_later(
    endpoint: str, stream_name: str
) -> None:
    """In a cluster a stream created through another node reaches this node's catalog a moment
    later: wait_for_active takes STREAM_NOT_FOUND as "not yet" for its first 2 s, no longer."""
    async with connect(endpoint) as client, connect(endpoint) as other:

        async def create_soon() -> None:
            await anyio.sleep(0.3)
            await other.create_stream(stream_name, 1)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(create_soon)
            described = await client.wait_for_active(stream_name, 10.0)
        assert described.status == "ACTIVE"
        started = anyio.current_time()
        with pytest.raises(StreamNotFoundError):  # within the 10 s: the grace ended it
            await client.wait_for_active(stream_name + "-never", 10.0, poll_interval_s=0.05)
        assert anyio.current_time() - started >= 1.9
