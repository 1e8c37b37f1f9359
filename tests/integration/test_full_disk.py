"""A full disk, for real: the server's data dir is a tmpfs of 8 MiB, filled to the last byte.

While it is full: writes get STORAGE_FULL (native, per record) and ServiceUnavailable (503, which
botocore retries) through the Kinesis gateway; the metadata store refuses cleanly with
STORAGE_FULL (create stream, group join) instead of INTERNAL "cannot rollback"; deleting a
stream still works, because that is how an operator frees space; SIGTERM exits 0 without a
traceback. Once space is back everything works again in the same process, and every
acknowledged record is still there after a restart.

Mounting needs root (CI runs as root); the test is skipped, saying so, only where it cannot mount.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess, disk
from streamd_client import Client, Position, RecordFailure, connect, errors, group_admin

from .aws import kinesis_client

pytestmark = pytest.mark.anyio

DISK_BYTES = 8 * 1024 * 1024
SHARD_0 = "shardId-000000000000"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # one backend is enough: this tests the server, not the client's event loop


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted at ``tmp_path / "data"``, unmounted at teardown."""
    mount = tmp_path / "data"
    try:
        disk.mount_tmpfs(mount, DISK_BYTES)
    except disk.DiskUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield mount
    finally:
        disk.unmount(mount)


def fill_to_the_last_byte(directory: Path) -> None:
    """Grow a filler file until the file system refuses even one byte."""
    disk.fill(directory)
    assert os.statvfs(directory).f_bavail == 0


async def join(client: Client, stream: str, group: str) -> group_admin.Assignment:
    return await group_admin.join(
        client,
        stream,
        group,
        uuid.uuid4().hex[:12],
        client_info="test",
        initial=Position.trim_horizon(),
        session_timeout_ms=3000,
        rebalance_timeout_ms=3000,
        timeout_s=10,
    )


async def read_all(client: Client, stream: str) -> list[bytes]:
    return [r.data async for r in client.reader(stream, SHARD_0)]


async def fill_with_records(client: Client, stream: str) -> None:
    """Put 64 KiB records until the disk refuses them (STORAGE_FULL per record)."""
    for _ in range(DISK_BYTES // (16 * 65536) + 10):
        put = await client.put_records(stream, [(os.urandom(65536), "b") for _ in range(16)])
        if put.failed_count:
            codes = {r.code for r in put.results if isinstance(r, RecordFailure)}
            assert codes == {"STORAGE_FULL"}, codes
            return
    raise AssertionError("the disk never filled up")


async def test_full_disk_refuses_cleanly_frees_by_delete_and_recovers_without_restart(
    small_disk: Path,
) -> None:
    kept = [f"kept-{i}".encode() for i in range(20)]
    with ServerProcess(small_disk, kinesis=True) as server:
        kinesis = kinesis_client(server)
        async with connect(server.endpoint) as client:
            await client.create_stream("victim", 1)
            await client.create_stream("ballast", 1)
            for data in kept:
                await client.put_record("victim", data, "k")
            await fill_with_records(client, "ballast")
            fill_to_the_last_byte(small_disk)

            # Writes: typed and retryable, on both protocols. (64 KiB: a few bytes could still
            # fit in the segment file's last, partly used page.)
            no_room = os.urandom(65536)  # incompressible
            put = await client.put_records("victim", [(no_room, "k")])
            failure = put.results[0]
            assert isinstance(failure, RecordFailure) and failure.code == "STORAGE_FULL"
            with pytest.raises(errors.StorageFullError) as refused:
                await client.put_record("victim", no_room, "k")
            assert refused.value.retryable
            with pytest.raises(ClientError) as boto_refused:
                kinesis.put_record(StreamName="victim", Data=no_room, PartitionKey="k")
            error = boto_refused.value.response
            assert error["Error"]["Code"] == "ServiceUnavailable"
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
            answer = kinesis.put_records(
                StreamName="victim", Records=[{"Data": no_room, "PartitionKey": "k"}]
            )
            assert answer["FailedRecordCount"] == 1
            assert answer["Records"][0]["ErrorCode"] == "InternalFailure"
            # Metadata transactions: typed, and the store stays usable.
            with pytest.raises(errors.StorageFullError):
                await client.create_stream("newcomer", 1)
            with pytest.raises(errors.StorageFullError):
                await join(client, "victim", "g")
            assert await read_all(client, "victim") == kept  # reads need no space

            # Deleting a stream works on a full disk, and frees its space.
            await client.delete_stream("ballast")
            assert "ballast" not in await client.list_streams()
            assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize > 4 << 20

            # Space is back: everything works, no restart.
            await client.put_record("victim", b"after", "k")
            kinesis.put_record(StreamName="victim", Data=b"after-kinesis", PartitionKey="k")
            await client.create_stream("newcomer", 1)
            assert (await join(client, "victim", "g")).assignment
            assert await read_all(client, "victim") == [*kept, b"after", b"after-kinesis"]

            # Full again, then SIGTERM: a clean exit even though nothing can be written.
            fill_to_the_last_byte(small_disk)
        start = server.log_text().rindex("--- start")
        assert await anyio.to_thread.run_sync(server.terminate) == 0
        stopping = server.log_text()[start:]
        assert "Traceback" not in stopping and '"server.stopped"' in stopping

        disk.free(small_disk)
        await anyio.to_thread.run_sync(server.restart)
        async with connect(server.endpoint) as client:
            assert await read_all(client, "victim") == [*kept, b"after", b"after-kinesis"]
            assert sorted(await client.list_streams()) == ["newcomer", "victim"]
        kinesis.close()
