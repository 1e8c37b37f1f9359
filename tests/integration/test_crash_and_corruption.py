"""Faults against a real server: kill -9 under a producer, garbage after a segment's tail, a
flipped byte inside a stored batch. Each test has its own server process and data dir.

The invariants checked (ARCHITECTURE.md): an acknowledged write survives kill -9 byte-exact and
in order (1); nothing unacknowledged is half-visible (2); a torn tail is truncated at recovery
and the log says so, and a CRC mismatch is reported, never served (6).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import anyio
import pytest

from streamd.testing import History, Seen, ServerProcess, check, make_data
from streamd_client import Client, Position, PutResult, connect, errors
from streamd_client import batch as batchfmt

pytestmark = pytest.mark.anyio

SHARD_0 = "shardId-000000000000"


def segment_files(server: ServerProcess, stream: str) -> list[Path]:
    """``<data>/streams-by-id/<stream id>/<shard_id>/NNNNNNNNNNNNNNNNNNNN.log``, in offset order."""
    return sorted(server.stream_dir(stream).glob("shardId-*/[0-9]*.log"))


def batch_spans(segment: Path) -> list[tuple[int, int]]:
    """(file position, length) of every batch in a segment, walking the headers."""
    data = segment.read_bytes()
    spans, position = [], 0
    while position + batchfmt.HEADER_BYTES <= len(data):
        header = batchfmt.parse_header(data[position : position + batchfmt.HEADER_BYTES])
        spans.append((position, header.length))
        position += header.length
    return spans


def log_events(server: ServerProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in server.log_text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            found.append(json.loads(line))
    return found


async def read_everything(client: Client, stream: str) -> dict[str, list[Seen]]:
    found: dict[str, list[Seen]] = {}
    for shard in (await client.describe_stream(stream)).shards:
        found[shard.shard_id] = [
            Seen(r.shard_id, r.sequence_number, r.partition_key, r.data)
            async for r in client.reader(stream, shard.shard_id)
        ]
    return found


async def test_kill9_under_a_producer_keeps_every_acked_record(
    fresh_server: ServerProcess, stream_name: str
) -> None:
    """The server dies mid-stream and stays down until the producer gives up; after a restart
    every acked record is there byte-exact, in per-key order, once; the rest is whole or absent."""
    history = History()
    keys = [f"key-{i}" for i in range(16)]
    async with connect(fresh_server.endpoint, request_timeout_s=2.0) as client:
        await client.create_stream(stream_name, 3)
        async with client.producer(
            stream_name, linger_ms=2, retries_max=2, backoff_ms_initial=10, backoff_ms_max=50
        ) as producer:
            pendings = []
            with anyio.move_on_after(30):
                for n in range(1_000_000):
                    key = keys[n % len(keys)]
                    data = make_data(key, n, 64 + n % 200)
                    history.record_sent(key, n, data)
                    pendings.append((key, n, await producer.put(data, key)))
                    if n == 20_000:
                        await anyio.to_thread.run_sync(fresh_server.kill9)
                    if n > 20_000 and producer.stats.failed_records > 0:
                        break  # the producer noticed the crash and gave up on some records
            await producer.flush()
        for key, n, pending in pendings:
            try:
                result = await pending.result()
            except errors.StreamdError as exc:
                history.record_failure(key, n, exc.code)
            else:
                history.record_ack(key, n, result.shard_id, result.sequence_number)
    assert len(history.acked) >= 1000, "the crash came before anything was acknowledged"
    assert history.failed, "the crash should have failed some records"

    await anyio.to_thread.run_sync(fresh_server.restart)
    async with connect(fresh_server.endpoint) as client:
        report = check(history, await read_everything(client, stream_name))
    assert report.ok, report.summary()
    assert report.found >= report.acked


async def test_garbage_after_the_tail_is_truncated(
    fresh_server: ServerProcess, stream_name: str
) -> None:
    async with connect(fresh_server.endpoint) as client:
        await client.create_stream(stream_name, 1)
        for b in range(3):
            await client.put_records(stream_name, [(f"{b}-{j}".encode(), "k") for j in range(10)])
    await anyio.to_thread.run_sync(fresh_server.kill9)
    segment = segment_files(fresh_server, stream_name)[-1]
    garbage = random.Random(7).randbytes(1000)
    with segment.open("ab") as file:
        file.write(garbage)

    await anyio.to_thread.run_sync(fresh_server.restart)
    opened = [e for e in log_events(fresh_server, "shard.opened") if e["truncated_bytes"]]
    assert opened and opened[-1]["truncated_bytes"] == len(garbage), "the log must say what it cut"
    async with connect(fresh_server.endpoint) as client:
        datas = [r.data for r in (await read_everything(client, stream_name))[SHARD_0]]
        assert datas == [f"{b}-{j}".encode() for b in range(3) for j in range(10)]
        # The log continues after the cut, and the new record is readable.
        await client.put_record(stream_name, b"after", "k")
        datas = [r.data for r in (await read_everything(client, stream_name))[SHARD_0]]
        assert datas[-1] == b"after" and len(datas) == 31


@pytest.mark.parametrize("stop", ["kill9", "terminate"])
@pytest.mark.parametrize("corrupt_batch", [1, 2])
async def test_flipped_byte_is_reported_never_served(
    fresh_server: ServerProcess, stream_name: str, stop: str, corrupt_batch: int
) -> None:
    """Three stored batches; one byte of one batch's payload flips while the server is down.
    The server starts, serves the other batches, and answers CORRUPT_DATA for the bad one."""
    results = []
    async with connect(fresh_server.endpoint) as client:
        await client.create_stream(stream_name, 1)
        for b in range(3):
            put = await client.put_records(
                stream_name, [(f"batch{b}-{j}".encode(), "k") for j in range(10)]
            )
            results.append(put.results)
    await anyio.to_thread.run_sync(getattr(fresh_server, stop))
    segment = segment_files(fresh_server, stream_name)[-1]
    position, length = batch_spans(segment)[corrupt_batch]
    with segment.open("r+b") as file:
        flip_at = position + batchfmt.HEADER_BYTES + (length - batchfmt.HEADER_BYTES) // 2
        file.seek(flip_at)
        byte = file.read(1)
        file.seek(flip_at)
        file.write(bytes([byte[0] ^ 0x40]))
        file.flush()
        os.fsync(file.fileno())

    await anyio.to_thread.run_sync(fresh_server.restart)
    async with connect(fresh_server.endpoint) as client:
        for b in range(3):
            first = results[b][0]
            assert isinstance(first, PutResult)
            position_b = Position.at_sequence(first.sequence_number)
            if b == corrupt_batch:
                with pytest.raises(errors.CorruptDataError):
                    await client.read(stream_name, SHARD_0, position_b)
                continue
            page = await client.read(stream_name, SHARD_0, position_b, limit=10)
            assert [r.data for r in page.records] == [f"batch{b}-{j}".encode() for j in range(10)]
        # Reading from the start serves what precedes the bad batch, then refuses to go on.
        reader = client.reader(stream_name, SHARD_0)
        served = []
        with pytest.raises(errors.CorruptDataError):
            async for record in reader:
                served.append(record.data)
        assert served == [f"batch{b}-{j}".encode() for b in range(corrupt_batch) for j in range(10)]
