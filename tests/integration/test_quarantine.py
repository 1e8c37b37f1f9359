"""A damaged batch in the middle of a shard's log, against a real server: every reader gets a
typed error naming the range, an operator quarantines it with the CLI, every reader goes on
past it, and nothing intact is lost, also after a restart.

Three batches of ten records; one byte of the middle batch's payload flips while the server is
down (after kill -9, recovery finds it; after a clean stop, the first read does). Then:

- native read -> DATA_CORRUPT (a CorruptDataError) whose details name stream, shard and the
  sequence range; boto3 GetRecords -> InternalFailureException (500) naming shard and range;
- a consumer-group worker keeps running and its lease, and hears ``data_corrupt``;
- ``streamd admin quarantine-range`` refuses an intact batch, then moves the damaged one aside;
- the worker goes on by itself; native reads show the gap (``skipped``); GetRecords continues
  after it; every intact record keeps its original sequence number; the damaged bytes are in
  the quarantine file; all of it holds after a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess
from streamd_client import Client, Position, PutResult, connect, errors
from streamd_client import batch as batchfmt
from streamd_client.group import Batch, GroupWorker, RecordProcessor

from .aws import kinesis_client

pytestmark = pytest.mark.anyio

SHARD_0 = "shardId-000000000000"
STREAM = "damaged"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the server is under test here; the client runs on both elsewhere


def flip_a_byte_of_batch(server: ServerProcess, batch: int) -> bytes:
    """Flip one payload byte of the ``batch``-th stored batch; returns that batch's bytes."""
    (segment,) = sorted(server.data_dir.glob(f"**/{SHARD_0}/[0-9]*.log"))
    data = segment.read_bytes()
    position = 0
    for _ in range(batch):
        position += batchfmt.parse_header(data, position).length
    length = batchfmt.parse_header(data, position).length
    flip_at = position + batchfmt.HEADER_BYTES + (length - batchfmt.HEADER_BYTES) // 2
    with segment.open("r+b") as file:
        file.seek(flip_at)
        file.write(bytes([data[flip_at] ^ 0x40]))
        file.flush()
        os.fsync(file.fileno())
    return segment.read_bytes()[position : position + length]


def kinesis_records(kinesis: Any, iterator_type: str, **position: str) -> list[tuple[str, bytes]]:
    iterator = kinesis.get_shard_iterator(
        StreamName=STREAM, ShardId=SHARD_0, ShardIteratorType=iterator_type, **position
    )["ShardIterator"]
    found: list[tuple[str, bytes]] = []
    for _ in range(10):
        page = kinesis.get_records(ShardIterator=iterator)
        found += [(r["SequenceNumber"], r["Data"]) for r in page["Records"]]
        if page["MillisBehindLatest"] == 0 and not page["Records"]:
            break
        iterator = page["NextShardIterator"]
    return found


def quarantine_cli(
    server: ServerProcess, first: str, last: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "streamd", "admin", "quarantine-range", STREAM, SHARD_0]
    command += ["--from", first, "--to", last, "--endpoint", server.endpoint]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


class Recorder(RecordProcessor):
    """Records what it processes and the damage it hears of; ``events[n]`` is set once it has
    seen n records, ``damaged`` at the first ``data_corrupt``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.damage: list[errors.DataCorruptError] = []
        self.damaged = anyio.Event()
        self.events = {10: anyio.Event(), 20: anyio.Event()}

    async def process_records(self, batch: Batch) -> None:
        self.seen += [(r.sequence_number, r.data) for r in batch.records]
        for count, event in self.events.items():
            if len(self.seen) >= count:
                event.set()

    async def data_corrupt(self, error: errors.DataCorruptError) -> None:
        self.damage.append(error)
        self.damaged.set()


async def all_records(client: Client) -> list[tuple[str, bytes]]:
    return [(r.sequence_number, r.data) async for r in client.reader(STREAM, SHARD_0)]


@pytest.mark.parametrize("stop", ["kill9", "terminate"])
async def test_a_damaged_batch_is_reported_quarantined_and_read_past(
    tmp_path: Path, stop: str
) -> None:
    with ServerProcess(tmp_path / "data", kinesis=True) as server:
        puts: list[list[tuple[str, bytes]]] = []
        async with connect(server.endpoint) as client:
            await client.create_stream(STREAM, 1)
            for b in range(3):
                datas = [f"batch{b}-{j}".encode() for j in range(10)]
                answer = await client.put_records(STREAM, [(d, "k") for d in datas])
                results = [r for r in answer.results if isinstance(r, PutResult)]
                puts.append([(r.sequence_number, d) for r, d in zip(results, datas, strict=True)])
        await anyio.to_thread.run_sync(getattr(server, stop))
        damaged_bytes = flip_a_byte_of_batch(server, 1)
        await anyio.to_thread.run_sync(server.restart)
        first, last = puts[1][0][0], puts[1][-1][0]
        kinesis = kinesis_client(server)

        async with connect(server.endpoint) as client:
            # Native: typed, named, and everything before the damage is served.
            served: list[tuple[str, bytes]] = []
            with pytest.raises(errors.DataCorruptError) as refused:
                async for record in client.reader(STREAM, SHARD_0):
                    served.append((record.sequence_number, record.data))
            assert served == puts[0]
            assert isinstance(refused.value, errors.CorruptDataError)  # old handlers catch it
            details = refused.value.details
            assert (details["stream"], details["shard_id"]) == (STREAM, SHARD_0)
            assert (details["from_sequence"], details["to_sequence"]) == (first, last)

            # Kinesis: a 5xx whose message names the shard and the range, never a traceback.
            with pytest.raises(ClientError) as boto_refused:
                kinesis_records(kinesis, "AT_SEQUENCE_NUMBER", StartingSequenceNumber=first)
            error = boto_refused.value.response
            assert error["Error"]["Code"] == "InternalFailureException"
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
            message = error["Error"]["Message"]
            assert SHARD_0 in message and first in message and last in message

            recorder = Recorder()
            async with GroupWorker(
                client, STREAM, "billing", processor=lambda _: recorder, corrupt_retry_s=0.2
            ) as worker:
                with anyio.fail_after(20):
                    await recorder.damaged.wait()
                assert recorder.seen == puts[0]
                assert recorder.damage[0].details["from_sequence"] == first
                assert worker.assignment() == {SHARD_0: 1}  # lease kept, worker alive

                # The operator: an intact batch is refused, the damaged one moved aside.
                intact = await anyio.to_thread.run_sync(
                    quarantine_cli, server, puts[2][0][0], puts[2][-1][0]
                )
                assert intact.returncode == 1 and "INVALID_ARGUMENT" in intact.stderr
                done = await anyio.to_thread.run_sync(quarantine_cli, server, first, last)
                assert done.returncode == 0, done.stderr
                assert "quarantined: 10 record(s)" in done.stdout

                # The worker goes on by itself, past the gap.
                with anyio.fail_after(20):
                    await recorder.events[20].wait()
                assert recorder.seen == puts[0] + puts[2]
                assert len(recorder.damage) == 1

            await check_read_past(client, kinesis, puts)
            await client.put_record(STREAM, b"later", "k")  # the log goes on after it all

        quarantine_files = list(server.data_dir.glob("**/quarantine/*.bin"))
        assert [f.read_bytes() for f in quarantine_files] == [damaged_bytes]

        await anyio.to_thread.run_sync(server.terminate)
        await anyio.to_thread.run_sync(server.restart)
        async with connect(server.endpoint) as client:
            await check_read_past(client, kinesis, puts, later=True)
        kinesis.close()


async def check_read_past(
    client: Client, kinesis: Any, puts: list[list[tuple[str, bytes]]], *, later: bool = False
) -> None:
    tail = [b"later"] if later else []
    everything = await all_records(client)
    assert everything[:20] == puts[0] + puts[2]  # original sequence numbers, both sides
    assert [d for _, d in everything[20:]] == tail
    first, last = puts[1][0][0], puts[1][-1][0]
    page = await client.read(STREAM, SHARD_0, Position.at_sequence(first))
    assert page.skipped is not None  # the gap, visible and named
    assert (page.skipped.from_sequence, page.skipped.to_sequence) == (first, last)
    assert [(r.sequence_number, r.data) for r in page.records][:10] == puts[2]
    through_kinesis = await anyio.to_thread.run_sync(kinesis_records, kinesis, "TRIM_HORIZON")
    assert through_kinesis[:20] == puts[0] + puts[2]
    after = await anyio.to_thread.run_sync(
        lambda: kinesis_records(kinesis, "AT_SEQUENCE_NUMBER", StartingSequenceNumber=first)
    )
    assert after[:10] == puts[2]
