"""Stream names are never paths: ``.``, ``..``, ``STREAM_ID`` and names like the server's own
directories are ordinary streams, through the native API and boto3, and creating and deleting
them never touches another stream's records (issue 10, item 1).

Before the by-id layout, ``DeleteStream(".")`` removed every stream's data, after which a restart
reused old sequence numbers; a ``..`` stream kept the server from starting again; ``STREAM_ID``
answered INTERNAL.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd_client import Client, Position, PutResult, connect
from streamd_client.model import parse_sequence

from .aws import kinesis_client

pytestmark = pytest.mark.anyio

VICTIM = "victim"
HOSTILE = [".", "..", "STREAM_ID", "streams-by-id", "trash", "meta.sqlite3", "streams"]


@pytest.fixture
def gateway(tmp_path: Any) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", kinesis=True) as process:
        yield process


async def everything(client: Client, stream: str) -> dict[str, list[tuple[str, bytes]]]:
    """(sequence, data) of every record, per shard."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for shard in (await client.describe_stream(stream)).shards:
        records: list[tuple[str, bytes]] = []
        position = Position.trim_horizon()
        while True:
            page = await client.read(stream, shard.shard_id, position)
            records += [(r.sequence_number, r.data) for r in page.records]
            if not page.records:
                break
            position = page.next_position
        out[shard.shard_id] = records
    return out


async def hostile_round_native(client: Client, names: list[str]) -> None:
    for name in names:
        await client.create_stream(name, 2)
        await client.put_record(name, b"hostile", "k")
        assert await everything(client, name)  # readable like any stream
        await client.delete_stream(name)


def hostile_round_boto3(kinesis: Any, names: list[str]) -> None:
    for name in names:
        kinesis.create_stream(StreamName=name, ShardCount=2)
        kinesis.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 20}
        )
        kinesis.put_record(StreamName=name, Data=b"hostile", PartitionKey="k")
        kinesis.delete_stream(StreamName=name)


async def test_hostile_names_never_touch_another_streams_records(gateway: ServerProcess) -> None:
    async with connect(gateway.endpoint) as client:
        await client.create_stream(VICTIM, 3)
        for round_ in range(4):
            put = await client.put_records(
                VICTIM, [(f"{round_}-{i}".encode(), f"key-{i}") for i in range(100)]
            )
            assert all(isinstance(r, PutResult) for r in put.results)
        before = await everything(client, VICTIM)
        assert sum(map(len, before.values())) == 400
        victim_dir = gateway.stream_dir(VICTIM)
        names = [*HOSTILE, victim_dir.name]  # a name spelled like the victim's directory too
        await hostile_round_native(client, names)
        await anyio.to_thread.run_sync(hostile_round_boto3, kinesis_client(gateway), names)
        assert await everything(client, VICTIM) == before
        assert await client.list_streams() == [VICTIM]

    assert await anyio.to_thread.run_sync(gateway.terminate) == 0
    await anyio.to_thread.run_sync(gateway.restart)
    async with connect(gateway.endpoint) as client:
        assert await everything(client, VICTIM) == before  # same records, same sequence numbers
        for shard_id, records in before.items():
            newest = max(parse_sequence(sequence)[1] for sequence, _ in records)
            key = next(f"key-{i}" for i in range(100) if shard_for(before, shard_id, i))
            put = await client.put_record(VICTIM, b"after restart", key)
            assert put.shard_id == shard_id
            assert parse_sequence(put.sequence_number)[1] > newest
            assert int(put.sequence_number) > max(int(s) for s, _ in records)
        # The names still work after the restart, and the victim is still alone on disk.
        await hostile_round_native(client, HOSTILE)
        assert await client.list_streams() == [VICTIM]
    assert sorted(p.name for p in victim_dir.iterdir()) == sorted(before)


def shard_for(before: dict[str, list[tuple[str, bytes]]], shard_id: str, i: int) -> bool:
    """Whether the records of ``key-i`` landed in ``shard_id`` (their data ends in ``-i``)."""
    return any(data.endswith(f"-{i}".encode()) for _, data in before[shard_id])


async def test_data_files_are_0600_and_directories_0700(fresh_server: ServerProcess) -> None:
    async with connect(fresh_server.endpoint) as client:
        await client.create_stream("perms", 1)
        await client.put_record("perms", b"x", "k")
    await anyio.to_thread.run_sync(fresh_server.terminate)  # a clean stop writes the markers
    data_dir = fresh_server.data_dir
    stream_dir = fresh_server.stream_dir("perms")
    checked = 0
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode == 0o700, (root, name, oct(mode))
            checked += 1
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode == 0o600, (root, name, oct(mode))
            checked += 1
    assert (stream_dir / "shardId-000000000000" / "clean-shutdown").exists()
    assert checked >= 6  # .lock, meta.sqlite3, directories, a segment, a marker
