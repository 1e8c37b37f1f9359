"""KPL-aggregated records against a real server: stored and served untouched as one record
(boto3 and native), unpacked on request by the native reader, ``streamd read --deaggregate``
and the group worker, whose checkpoints may point inside an aggregate so a restarted worker
resumes after the last user record it processed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from streamd.testing import ServerProcess
from streamd_client import Position, connect
from streamd_client.group import GroupWorker
from streamd_client.kpl import SubRecord, encode_aggregated

from .aws import kinesis_client

SHARD = "shardId-000000000000"
USER_RECORDS = [SubRecord(f"user-{i}", b"payload-%d" % i) for i in range(5)]
AGGREGATE = encode_aggregated(USER_RECORDS)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("kpl") / "data", fsync="never", kinesis=True
    ) as process:
        yield process


@pytest.fixture(scope="module")
def kinesis(gateway: ServerProcess) -> Iterator[Any]:
    client = kinesis_client(gateway)
    yield client
    client.close()


def stream_with_aggregate(kinesis: Any) -> str:
    """A one-shard stream holding: the aggregate, then one plain record."""
    name = f"kpl-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.put_record(StreamName=name, Data=AGGREGATE, PartitionKey="agg")
    kinesis.put_record(StreamName=name, Data=b"plain", PartitionKey="p")
    return name


def test_an_aggregate_is_one_record_served_untouched(kinesis: Any) -> None:
    name = stream_with_aggregate(kinesis)
    it = kinesis.get_shard_iterator(
        StreamName=name, ShardId=SHARD, ShardIteratorType="TRIM_HORIZON"
    )
    records = kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]
    assert [r["Data"] for r in records] == [AGGREGATE, b"plain"]
    assert records[0]["PartitionKey"] == "agg"


async def test_the_native_reader_deaggregates_on_request(gateway: ServerProcess) -> None:
    kinesis = kinesis_client(gateway)
    name = stream_with_aggregate(kinesis)
    kinesis.close()
    async with connect(gateway.endpoint) as client:
        whole = [r async for r in client.reader(name, SHARD)]
        assert [r.data for r in whole] == [AGGREGATE, b"plain"]
        assert all(r.sub_sequence is None for r in whole)
        unpacked = [r async for r in client.reader(name, SHARD, deaggregate=True)]
        async with client.stream_reader(name, deaggregate=True) as reader:
            via_stream = [r async for r in reader]
    expected = [(s.partition_key, s.data, i) for i, s in enumerate(USER_RECORDS)]
    assert [(r.partition_key, r.data, r.sub_sequence) for r in unpacked] == [
        *expected,
        ("p", b"plain", None),
    ]
    assert {r.sequence_number for r in unpacked[:5]} == {whole[0].sequence_number}
    assert via_stream == unpacked


def test_streamd_read_deaggregate_prints_user_records(kinesis: Any, gateway: ServerProcess) -> None:
    name = stream_with_aggregate(kinesis)
    command = [sys.executable, "-m", "streamd", "read", name, "--json", "--deaggregate"]
    out = subprocess.run(
        [*command, "--endpoint", gateway.endpoint],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["partition_key"], d["data"], d.get("sub_sequence")) for d in lines] == [
        *((s.partition_key, s.data.decode(), i) for i, s in enumerate(USER_RECORDS)),
        ("p", "plain", None),
    ]


async def test_a_group_checkpoint_inside_an_aggregate_resumes_after_that_user_record(
    gateway: ServerProcess,
) -> None:
    kinesis = kinesis_client(gateway)
    name = stream_with_aggregate(kinesis)
    kinesis.close()
    options: dict[str, Any] = {"read_wait_ms": 100, "deaggregate": True}
    async with connect(gateway.endpoint) as client:
        with trio.fail_after(20):
            async with GroupWorker(client, name, "g", **options) as first:
                async for batch in first:
                    assert [r.sub_sequence for r in batch.records[:5]] == [0, 1, 2, 3, 4]
                    await batch.checkpointer.checkpoint(batch.records[2])  # 0..2 done
                    break
            async with GroupWorker(client, name, "g", **options) as second:
                async for batch in second:
                    resumed = [(r.data, r.sub_sequence) for r in batch.records]
                    await batch.checkpoint()  # the plain record, whole
                    break
            async with GroupWorker(client, name, "g", **options) as third:
                kinesis = kinesis_client(gateway)
                kinesis.put_record(StreamName=name, Data=b"later", PartitionKey="p")
                kinesis.close()
                async for batch in third:
                    after_all = [r.data for r in batch.records]
                    break
    assert resumed == [(b"payload-3", 3), (b"payload-4", 4), (b"plain", None)]
    assert after_all == [b"later"]
    async with connect(gateway.endpoint) as client:
        assert (await client.read(name, SHARD, Position.trim_horizon(), max_bytes=1 << 20)).records[
            0
        ].data == AGGREGATE  # stored as it came
