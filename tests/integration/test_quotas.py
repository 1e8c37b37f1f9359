"""Per-shard throughput quotas over real TCP: boto3 against the gateway, the native client and
the Producer, all against one server started with low custom figures (docs/kinesis.md,
"Throughput quotas"; docs/operations.md)."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess
from streamd.testing.process import free_ports
from streamd_client import connect
from streamd_client.results import PutResult, RecordFailure

WRITE_RECORDS_PER_S = 20
WRITE_BYTES_PER_S = 64 * 1024
READ_CALLS_PER_S = 2
THROUGHPUT = "ProvisionedThroughputExceededException"


@pytest.fixture(scope="module")
def metrics_port() -> int:
    (port,) = free_ports("127.0.0.1", 1)
    return port


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Any]:
    args = [
        "--shard-write-records-per-s", str(WRITE_RECORDS_PER_S),
        "--shard-write-bytes-per-s", str(WRITE_BYTES_PER_S),
        "--shard-read-calls-per-s", str(READ_CALLS_PER_S),
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    data: Path = tmp_path_factory.mktemp("quotas") / "data"
    with ServerProcess(data, fsync="never", kinesis=True, extra_args=args) as process:
        yield process


def kinesis_client(server: ServerProcess) -> Any:
    """boto3 with one attempt per call: its legacy retry mode (aws.py's max_attempts 1) still
    retries once, and it retries throttling, which would hide the answer under test."""
    return boto3.client(
        "kinesis",
        endpoint_url=server.kinesis_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}),
    )


def _name() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def _created(kinesis: Any, shards: int = 1, **extra: Any) -> str:
    name = _name()
    kinesis.create_stream(StreamName=name, ShardCount=shards, **extra)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
    return name


def _read_all(kinesis: Any, name: str, shard_id: str = "shardId-000000000000") -> list[Any]:
    iterator = kinesis.get_shard_iterator(
        StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return list(kinesis.get_records(ShardIterator=iterator)["Records"])


def test_put_records_over_the_write_quota_fails_a_suffix_and_writes_the_rest(
    quota_server: ServerProcess,
) -> None:
    kinesis = kinesis_client(quota_server)
    name = _created(kinesis)
    entries = [{"Data": b"r%d" % i, "PartitionKey": "k"} for i in range(50)]
    answer = kinesis.put_records(StreamName=name, Records=entries)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    results = answer["Records"]
    accepted = [r for r in results if "SequenceNumber" in r]
    assert answer["FailedRecordCount"] == 50 - len(accepted) > 0
    # the shard's burst is one second of its rate; the accepted ones are a prefix
    assert WRITE_RECORDS_PER_S <= len(accepted) <= WRITE_RECORDS_PER_S + 1
    assert all("SequenceNumber" in r for r in results[: len(accepted)])
    for failed in results[len(accepted) :]:
        assert failed["ErrorCode"] == THROUGHPUT
        assert "Rate exceeded for shard shardId-000000000000" in failed["ErrorMessage"]

    stored = _read_all(kinesis, name)
    assert [r["Data"] for r in stored] == [b"r%d" % i for i in range(len(accepted))]
    assert [r["SequenceNumber"] for r in stored] == [r["SequenceNumber"] for r in accepted]


def test_put_record_over_the_write_quota_is_refused_with_http_400(
    quota_server: ServerProcess,
) -> None:
    kinesis = kinesis_client(quota_server)
    # 2 records/s for this stream (a tag over the server's figure): a refill takes 500 ms
    name = _created(kinesis, Tags={"streamd:quota:write-records-per-s": "2"})
    kinesis.put_record(StreamName=name, Data=b"first", PartitionKey="k")
    burst = [{"Data": b"b", "PartitionKey": "k"} for _ in range(3)]
    assert kinesis.put_records(StreamName=name, Records=burst)["FailedRecordCount"] > 0
    with pytest.raises(ClientError) as refused:
        kinesis.put_record(StreamName=name, Data=b"late", PartitionKey="k")
    error = refused.value.response
    assert error["Error"]["Code"] == THROUGHPUT
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "retry after" in error["Error"]["Message"]


def test_get_records_over_its_call_rate_is_refused(quota_server: ServerProcess) -> None:
    kinesis = kinesis_client(quota_server)
    name = _created(kinesis)
    kinesis.put_record(StreamName=name, Data=b"one", PartitionKey="k")
    iterator = kinesis.get_shard_iterator(  # iterators are not reads: they cost no call
        StreamName=name, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    passed = 0
    with pytest.raises(ClientError) as refused:
        for _ in range(10):  # refused within a few calls unless each one took 500 ms
            assert kinesis.get_records(ShardIterator=iterator)["Records"]
            passed += 1
    assert refused.value.response["Error"]["Code"] == THROUGHPUT
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert passed >= READ_CALLS_PER_S  # the burst
    time.sleep(1.0 / READ_CALLS_PER_S + 0.05)
    assert kinesis.get_records(ShardIterator=iterator)["Records"][0]["Data"] == b"one"


def test_a_stream_tag_overrides_the_servers_figures(quota_server: ServerProcess) -> None:
    kinesis = kinesis_client(quota_server)
    name = _created(kinesis, Tags={"streamd:quota:write-records-per-s": "unlimited"})
    entries = [{"Data": b"r%d" % i, "PartitionKey": "k"} for i in range(100)]
    assert kinesis.put_records(StreamName=name, Records=entries)["FailedRecordCount"] == 0
    with pytest.raises(ClientError) as refused:
        kinesis.add_tags_to_stream(StreamName=name, Tags={"streamd:quota:read-calls-per-s": "-1"})
    assert refused.value.response["Error"]["Code"] == "InvalidArgumentException"


@pytest.mark.anyio
async def test_native_put_records_gets_throttled_with_a_retry_after_hint(
    quota_server: ServerProcess, anyio_backend: str
) -> None:
    name = _name()
    async with connect(quota_server.endpoint) as client:
        await client.create_stream(name, 1)
        answer = await client.put_records(name, [(b"d%d" % i, "k") for i in range(40)])
    accepted = [r for r in answer.results if isinstance(r, PutResult)]
    failed = [r for r in answer.results if isinstance(r, RecordFailure)]
    assert answer.failed_count == len(failed) == 40 - len(accepted) > 0
    assert all(f.code == "THROTTLED" for f in failed)
    hint = failed[0].details or {}
    assert 0 < hint["retry_after_ms"] <= 1000 and hint["quota"] == "write_records"
    error = failed[0].to_error()
    assert error.retryable and error.details["retry_after_ms"] == hint["retry_after_ms"]


@pytest.mark.anyio
async def test_the_producer_under_throttling_delivers_every_record_in_order_per_key(
    quota_server: ServerProcess, anyio_backend: str
) -> None:
    name = _name()
    keys = [f"key-{i}" for i in range(6)]
    count = 300
    async with connect(quota_server.endpoint) as client:
        # a per-stream figure (the native create option): 100 records/s per shard, 2 shards
        await client.create_stream(name, 2, quotas={"write_records_per_s": 100})
        producer = client.producer(name, batch_records_max=40, linger_ms=2)
        started = time.monotonic()
        async with producer:
            pendings = [await producer.put(b"%d" % i, keys[i % len(keys)]) for i in range(count)]
        elapsed = time.monotonic() - started
        results = [await p.result() for p in pendings]
        assert producer.stats.failed_records == 0 and producer.stats.throttled_batches > 0
        seen: dict[str, list[int]] = {k: [] for k in keys}
        description = await client.describe_stream(name)
        for shard in description.shards:
            async for record in client.reader(name, shard.shard_id):
                seen[record.partition_key].append(int(record.data))
                if sum(map(len, seen.values())) == count:
                    break
    assert sum(map(len, seen.values())) == count
    for n, key in enumerate(keys):
        assert seen[key] == list(range(n, count, len(keys)))  # all, in the order put
    assert len({r.sequence_number for r in results}) == count
    assert elapsed >= 0.5  # 300 records over 2 x 100/s with a 100-record burst each


def test_throttled_records_and_reads_are_in_the_metrics(
    quota_server: ServerProcess, metrics_port: int
) -> None:
    kinesis = kinesis_client(quota_server)
    name = _created(kinesis)
    entries = [{"Data": b"0123456789", "PartitionKey": "k"} for _ in range(30)]
    failed = kinesis.put_records(StreamName=name, Records=entries)["FailedRecordCount"]
    assert failed > 0
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    labels = f'{{shard_id="shardId-000000000000",stream="{name}"}}'
    assert f"streamd_throttled_records_total{labels} {float(failed)}" in text
    assert f"streamd_throttled_bytes_total{labels} {float(failed * 11)}" in text
