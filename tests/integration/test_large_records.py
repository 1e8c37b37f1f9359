"""Records up to 10 MiB on a stream whose max record size UpdateMaxRecordSize raised, end to end:
the gateway (PutRecord, PutRecords, GetRecords, SubscribeToShard) and the native protocol
(put_records, reads with a small max_bytes), stored in one batch, read back after a kill -9 and
a restart; a stream at the default keeps refusing records over 1 MiB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess
from streamd_client import Position, connect
from streamd_client.errors import RecordTooLargeError, RequestTooLargeError

from .aws import kinesis_client

MIB = 1024 * 1024
SHARD = "shardId-000000000000"
BIG = os.urandom(10 * MIB)  # random: zstd cannot shrink it, the stored batch is 10 MiB too


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("large") / "data", fsync="never", kinesis=True
    ) as process:
        yield process


@pytest.fixture(scope="module")
def kinesis(gateway: ServerProcess) -> Iterator[Any]:
    client = kinesis_client(gateway, read_timeout=60)
    yield client
    client.close()


def new_stream(kinesis: Any, *, kib: int | None = None) -> str:
    name = f"large-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    if kib is not None:
        arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
            "StreamARN"
        ]
        kinesis.update_max_record_size(StreamARN=arn, MaxRecordSizeInKiB=kib)
    return name


def read_all(kinesis: Any, name: str) -> list[Any]:
    it = kinesis.get_shard_iterator(
        StreamName=name, ShardId=SHARD, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[Any] = []
    while True:
        page = kinesis.get_records(ShardIterator=it)
        records += page["Records"]
        if not page["Records"]:
            return records
        it = page["NextShardIterator"]


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_the_default_stays_one_mib_and_update_max_record_size_checks_its_range(
    kinesis: Any, gateway: ServerProcess
) -> None:
    name = new_stream(kinesis)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["MaxRecordSizeInKiB"] == 1024
    with pytest.raises(ClientError) as exc:
        kinesis.put_record(StreamName=name, Data=b"x" * (MIB + 1), PartitionKey="k")
    assert code(exc) == "ValidationException"
    assert "UpdateMaxRecordSize" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:  # 6 MiB in one PutRecords: over the default 5
        kinesis.put_records(
            StreamName=name, Records=[{"Data": b"x" * (MIB - 8), "PartitionKey": "k"}] * 6
        )
    assert code(exc) == "InvalidArgumentException"

    unchecked = kinesis_client(gateway, parameter_validation=False)  # the server's own check
    for bad in (1023, 10241):
        with pytest.raises(ClientError) as exc:
            unchecked.update_max_record_size(StreamARN=summary["StreamARN"], MaxRecordSizeInKiB=bad)
        assert code(exc) == "ValidationException"
    unchecked.close()


def test_ten_mib_records_through_the_gateway(kinesis: Any) -> None:
    name = new_stream(kinesis, kib=10240)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["MaxRecordSizeInKiB"] == 10240
    kinesis.put_record(StreamName=name, Data=BIG, PartitionKey="k")
    answer = kinesis.put_records(  # 10 MiB in all, data and key: the large-stream limit
        StreamName=name, Records=[{"Data": BIG[: 10 * MIB - 1], "PartitionKey": "k"}]
    )
    assert answer["FailedRecordCount"] == 0
    answer = kinesis.put_records(  # 6 MiB in one call: fine on a stream of large records
        StreamName=name, Records=[{"Data": b"y" * (MIB - 8), "PartitionKey": "k"}] * 6
    )
    assert answer["FailedRecordCount"] == 0
    with pytest.raises(ClientError) as exc:  # over 10 MiB: refused, not stored
        kinesis.put_record(StreamName=name, Data=BIG + b"x", PartitionKey="k")
    assert code(exc) == "ValidationException"
    records = read_all(kinesis, name)
    assert [len(r["Data"]) for r in records] == [10 * MIB, 10 * MIB - 1] + [MIB - 8] * 6
    assert records[0]["Data"] == BIG and records[1]["Data"] == BIG[: 10 * MIB - 1]


def test_a_ten_mib_record_through_subscribe_to_shard(kinesis: Any) -> None:
    name = new_stream(kinesis, kib=10240)
    kinesis.put_record(StreamName=name, Data=BIG, PartitionKey="k")
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="c")["Consumer"]
    stream = kinesis.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"],
        ShardId=SHARD,
        StartingPosition={"Type": "TRIM_HORIZON"},
    )["EventStream"]
    try:
        for event in stream:
            got = event["SubscribeToShardEvent"]["Records"]
            if got:
                assert [r["Data"] for r in got] == [BIG]
                break
    finally:
        stream.close()


async def test_ten_mib_records_natively_and_after_a_restart(
    kinesis: Any, gateway: ServerProcess
) -> None:
    small, large = new_stream(kinesis), new_stream(kinesis, kib=10240)
    async with connect(gateway.endpoint) as client:
        with pytest.raises(RecordTooLargeError):
            await client.put_records(small, [(BIG[: 2 * MIB], "k")])
        with pytest.raises(RequestTooLargeError):  # 6 MiB: over the default stream's 5
            await client.put_records(small, [(b"z" * (MIB - 8), "k")] * 6)
        top = BIG[: 10 * MIB - 1]  # with its 1-byte key, the 10 MiB a put_records may carry
        result = await client.put_records(large, [(top, "k")])
        assert result.failed_count == 0
        read = await client.read(large, SHARD, Position.trim_horizon(), max_bytes=1024)
        assert [r.data for r in read.records] == [top]  # one record, whatever max_bytes says
    gateway.kill9()
    gateway.restart()
    async with connect(gateway.endpoint) as client:
        read = await client.read(large, SHARD, Position.trim_horizon(), max_bytes=1024)
        assert [r.data for r in read.records] == [top]
        result = await client.put_records(large, [(BIG[:MIB], "k")])
        assert result.failed_count == 0
