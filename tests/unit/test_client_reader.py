"""ShardReader against the fake server: pages, positions, following the tip, retries."""

from __future__ import annotations

import anyio
import pytest
from fake_server import (  # noqa: F401 (pytest fixtures are found by name)
    anyio_backend,
    fake_server,
)

from streamd_client import Client, Position, Record, batch, connect, errors, wire

pytestmark = pytest.mark.anyio

SHARD0 = "shardId-000000000000"


async def _fill(client: Client, count: int, *, batch_records_max: int = 7) -> None:
    async with client.producer("s", batch_records_max=batch_records_max) as producer:
        for i in range(count):
            await producer.put(b"%d" % i, "k")


async def _collect(client: Client, start: Position | None = None, **kw: int) -> list[Record]:
    with anyio.fail_after(10):
        return [r async for r in client.reader("s", SHARD0, start, **kw)]


async def test_reader_reads_to_the_high_watermark_then_stops() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 100)
        reader = client.reader("s", SHARD0, max_bytes=300)  # many small pages
        with anyio.fail_after(10):
            records = [r async for r in reader]
        assert [r.data for r in records] == [b"%d" % i for i in range(100)]
        assert [r.offset for r in records] == list(range(100))
        assert reader.position == Position.at_offset(100)
        assert len(server.ops(wire.OP_READ)) > 5


async def test_reader_position_is_right_after_the_last_record_yielded() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 20)
        reader = client.reader("s", SHARD0)
        seen = []
        async for record in reader:
            seen.append(record)
            if len(seen) == 5:
                break
        assert reader.position == Position.at_offset(5)
        rest = await _collect(client, reader.position)
        assert [r.offset for r in rest] == list(range(5, 20))


async def test_reader_starts_at_each_kind_of_position() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 10)
        every = await _collect(client)
        fourth = every[3].sequence_number
        assert [r.offset for r in await _collect(client, Position.at_sequence(fourth))] == list(
            range(3, 10)
        )
        after = await _collect(client, Position.after_sequence(fourth))
        assert [r.offset for r in after] == list(range(4, 10))
        assert await _collect(client, Position.latest()) == []
        assert len(await _collect(client, Position.at_timestamp(0))) == 10


async def test_following_reader_yields_records_as_they_commit() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        got: list[bytes] = []

        async def follow() -> None:
            reader = client.reader("s", SHARD0, Position.latest(), follow=True, wait_ms=200)
            async for record in reader:
                got.append(record.data)
                if len(got) == 3:
                    return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.sleep(0.3)  # the reader long-polls at the tip meanwhile
                for i in range(3):
                    await client.put_record("s", b"%d" % i, "k")
                    await anyio.sleep(0.05)
        assert got == [b"0", b"1", b"2"]
        assert any(args["wait_ms"] == 200 for args in server.ops(wire.OP_READ))


async def test_following_reader_runs_until_cancelled() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 3)
        got: list[Record] = []
        with anyio.move_on_after(0.5) as scope:
            async for record in client.reader("s", SHARD0, follow=True, wait_ms=100):
                got.append(record)
        assert scope.cancelled_caught
        assert len(got) == 3


async def test_reader_retries_retryable_errors() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 5)
        server.inject(wire.OP_READ, "error", times=2, error=errors.ThrottledError("slow down"))
        server.inject(wire.OP_READ, "drop")
        assert len(await _collect(client)) == 5


async def test_reader_raises_non_retryable_errors() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        with pytest.raises(errors.ShardNotFoundError):
            async for _ in client.reader("s", "shardId-000000000009"):
                pass


async def test_reader_raises_corruption_instead_of_skipping_it() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 21)  # three batches of 7
        server.corrupt("s", SHARD0, batch_index=1, byte_at=batch.HEADER_BYTES + 5)
        got: list[Record] = []
        with pytest.raises(errors.CorruptDataError):
            async for record in client.reader("s", SHARD0, max_bytes=100):
                got.append(record)
        assert [r.offset for r in got] == list(range(7))


async def test_a_corrupt_header_is_detected_too() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        await _fill(client, 7)
        server.corrupt("s", SHARD0, batch_index=0, byte_at=20)  # leader epoch: header CRC
        with pytest.raises(errors.CorruptDataError):
            await _collect(client)
