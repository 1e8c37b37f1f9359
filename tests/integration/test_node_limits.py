"""Per-node limits against real servers (issue 10, item 4): a stream that would not fit the
open-files limit is refused up front with LIMIT_EXCEEDED (native and boto3), nothing is left
half-made and the server starts again; and many shards work through a small fd cache and a
small I/O pool, so descriptors and threads do not grow with the shards.

Before: a 1024-shard stream on a server allowed 1024 open files answered INTERNAL halfway, left a
ghost stream behind, and the server never started again (every segment held a descriptor, every
shard a thread).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, PutResult, connect, errors

from .aws import kinesis_client

pytestmark = pytest.mark.anyio

SEGMENT_NAME = re.compile(r"/[0-9]{20}\.log$")
NOFILE = 512  # allows 136 shards: 512 - (64 base + 128 connections + 128 fd cache + 56 threads)


def open_segment_files(pid: int) -> int:
    """Descriptors of ``pid`` open on segment files (``NNNN...NNNN.log``, 20 digits)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += SEGMENT_NAME.search(os.readlink(f"/proc/{pid}/fd/{fd}")) is not None
        except OSError:
            continue
    return count


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.fixture
def low_limit_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", kinesis=True, rlimit_nofile=NOFILE) as process:
        yield process


def boto3_create(server: ServerProcess, name: str, shards: int) -> tuple[str, int]:
    client = kinesis_client(server)
    try:
        client.create_stream(StreamName=name, ShardCount=shards)
    except client.exceptions.LimitExceededException as exc:
        return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]
    finally:
        client.close()
    return "created", 200


async def test_a_stream_over_the_open_files_limit_is_refused_whole(
    low_limit_server: ServerProcess,
) -> None:
    server = low_limit_server
    async with connect(server.endpoint) as client:
        with pytest.raises(errors.LimitExceededError) as info:
            await client.create_stream("huge", 1024)
        assert "ulimit -n" in info.value.message and "RLIMIT_NOFILE 512" in info.value.message
        code = await anyio.to_thread.run_sync(boto3_create, server, "huge2", 1024)
        assert code == ("LimitExceededException", 400)
        assert await client.list_streams() == []  # no ghost
        await client.create_stream("fits", 100)
        put = await client.put_records("fits", [(f"r{i}".encode(), f"k{i}") for i in range(300)])
        assert all(isinstance(r, PutResult) for r in put.results)
        with pytest.raises(errors.LimitExceededError):  # 200 in all would not fit either
            await client.create_stream("second", 100)
        with pytest.raises(errors.LimitExceededError):
            await client.resize_stream("fits", 200)
        assert await client.list_streams() == ["fits"]
    assert open_segment_files(server.pid) <= 128
    assert await anyio.to_thread.run_sync(server.terminate) == 0

    await anyio.to_thread.run_sync(server.restart)  # starts again, with everything
    assert '"event": "engine.limits"' in server.log_text()
    async with connect(server.endpoint) as client:
        assert await client.list_streams() == ["fits"]
        total = 0
        for shard in (await client.describe_stream("fits")).shards:
            page = await client.read("fits", shard.shard_id, Position.trim_horizon())
            total += len(page.records)
        assert total == 300
        await client.create_stream("small", 8)  # what fits still works
        await client.delete_stream("small")


async def test_many_shards_work_through_a_small_fd_cache_and_io_pool(tmp_path: Path) -> None:
    args = ["--segment-fds-max", "8", "--io-threads-max", "4"]
    with ServerProcess(tmp_path / "data", extra_args=args) as server:
        async with connect(server.endpoint) as client:
            await client.create_stream("wide", 64)
            sent: dict[bytes, str] = {}
            for round_ in range(5):
                entries = [(f"{round_}-{i}".encode(), f"key-{i}") for i in range(400)]
                put = await client.put_records("wide", entries)
                for (data, _), result in zip(entries, put.results, strict=True):
                    assert isinstance(result, PutResult)
                    sent[data] = result.sequence_number
            assert open_segment_files(server.pid) <= 8
            assert threads_of(server.pid) <= 16  # was one per shard written: 65 and more
            shards = (await client.describe_stream("wide")).shards
            assert len({sequence for sequence in sent.values()}) == len(sent)
            got: dict[bytes, str] = {}
            for shard in shards:
                position = Position.trim_horizon()
                while True:
                    page = await client.read("wide", shard.shard_id, position)
                    got.update((r.data, r.sequence_number) for r in page.records)
                    if not page.records:
                        break
                    position = page.next_position
            assert got == sent
            assert open_segment_files(server.pid) <= 8
        assert await anyio.to_thread.run_sync(server.terminate) == 0
        await anyio.to_thread.run_sync(server.restart)
        async with connect(server.endpoint) as client:
            page = await client.read("wide", shards[0].shard_id, Position.trim_horizon())
            assert page.records
            assert open_segment_files(server.pid) <= 8


async def test_a_node_restarted_under_a_lower_limit_starts_and_says_what_to_raise(
    tmp_path: Path,
) -> None:
    """More shards stored than the new limit allows: the server still starts and serves them
    (they hold no descriptor at rest), refuses new ones, and its log names ``ulimit -n``."""
    with ServerProcess(tmp_path / "data") as server:
        async with connect(server.endpoint) as client:
            await client.create_stream("many", 600)  # on main: 600 fds, over the limit below
            for half in range(2):
                entries = [(f"r{half}-{i}".encode(), f"k{i}") for i in range(300)]
                put = await client.put_records("many", entries)
                assert all(isinstance(r, PutResult) for r in put.results)
        assert await anyio.to_thread.run_sync(server.terminate) == 0
        server.rlimit_nofile = NOFILE  # allows 136 shards: fewer than 600
        await anyio.to_thread.run_sync(server.restart)
        warnings = [
            line for line in server.log_text().splitlines() if "engine.fd_limit_low" in line
        ]
        assert warnings and "ulimit -n" in warnings[0]
        async with connect(server.endpoint) as client:
            total = 0
            for shard in (await client.describe_stream("many")).shards:
                page = await client.read("many", shard.shard_id, Position.trim_horizon())
                total += len(page.records)
            assert total == 600
            with pytest.raises(errors.LimitExceededError):
                await client.create_stream("more", 1)
            await client.put_record("many", b"still writable", "k1")
        assert open_segment_files(server.pid) <= NOFILE // 4
