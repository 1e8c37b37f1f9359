"""The Kinesis gateway through boto3, unchanged, against a real ``streamd serve`` process:
every operation of the gateway core, its error cases, and a reshard seen through ListShards and
GetRecords (ChildShards, NextShardIterator None at a closed shard's end)."""

# ruff: noqa: E501  (tables of request cases read best one per line)

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess
from streamd_client.model import make_sequence

from .aws import kinesis_client

REGION = "us-east-1"
ARN_PREFIX = f"arn:aws:kinesis:{REGION}:000000000000:stream/"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("kinesis") / "data", fsync="never", kinesis=True
    ) as process:
        yield process


@pytest.fixture(scope="module")
def kinesis(gateway: ServerProcess) -> Iterator[Any]:
    client = kinesis_client(gateway, region=REGION)
    yield client
    client.close()


@pytest.fixture
def name() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"][
        "HTTPStatusCode"
    ]


def drain(kinesis: Any, stream: str, shard_id: str, kind: str = "TRIM_HORIZON") -> list[Any]:
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType=kind)[
        "ShardIterator"
    ]
    records: list[Any] = []
    while it:
        page = kinesis.get_records(ShardIterator=it)
        records += page["Records"]
        if not page["Records"]:
            break
        it = page.get("NextShardIterator")
    return records


def test_create_describe_list_delete(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=3, Tags={"team": "data"})
    description = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    assert description["StreamStatus"] == "ACTIVE"
    assert description["StreamARN"] == ARN_PREFIX + name
    assert description["RetentionPeriodHours"] == 24
    assert description["HasMoreShards"] is False
    assert [s["ShardId"] for s in description["Shards"]] == [
        f"shardId-00000000000{i}" for i in range(3)
    ]
    assert description["Shards"][0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert description["Shards"][-1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    assert isinstance(description["StreamCreationTimestamp"], datetime)
    page = kinesis.describe_stream(StreamName=name, Limit=2)["StreamDescription"]
    assert len(page["Shards"]) == 2 and page["HasMoreShards"] is True
    rest = kinesis.describe_stream(
        StreamARN=ARN_PREFIX + name, ExclusiveStartShardId="shardId-000000000001"
    )["StreamDescription"]
    assert [s["ShardId"] for s in rest["Shards"]] == ["shardId-000000000002"]

    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 3 and summary["ConsumerCount"] == 0
    assert summary["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
    assert name in kinesis.list_streams()["StreamNames"]
    assert kinesis.list_tags_for_stream(StreamName=name)["Tags"] == [
        {"Key": "team", "Value": "data"}
    ]

    with pytest.raises(ClientError) as exc:
        kinesis.create_stream(StreamName=name, ShardCount=1)
    assert error_code(exc) == ("ResourceInUseException", 400)
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        kinesis.describe_stream_summary(StreamName=name)


def test_create_errors_and_on_demand(kinesis: Any, name: str) -> None:
    with pytest.raises(ClientError) as exc:
        kinesis.create_stream(StreamName=name)
    assert error_code(exc) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as exc:
        kinesis.create_stream(StreamName="bad name!", ShardCount=1)
    assert error_code(exc) == ("ValidationException", 400)
    kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert summary["OpenShardCount"] == 4
    limits = kinesis.describe_limits()
    assert limits["OnDemandStreamCount"] >= 1 and limits["OpenShardCount"] >= 4
    kinesis.delete_stream(StreamName=name)


def test_list_streams_pages(kinesis: Any) -> None:
    prefix = f"page-{uuid.uuid4().hex[:6]}-"
    names = [f"{prefix}{i}" for i in range(3)]
    for n in names:
        kinesis.create_stream(StreamName=n, ShardCount=1)
    seen: list[str] = []
    answer = kinesis.list_streams(Limit=1, ExclusiveStartStreamName=prefix)
    while True:
        assert len(answer["StreamNames"]) == 1
        assert answer["StreamSummaries"][0]["StreamARN"] == ARN_PREFIX + answer["StreamNames"][0]
        seen += answer["StreamNames"]
        if not answer["HasMoreStreams"] or not seen[-1].startswith(prefix):
            break
        answer = kinesis.list_streams(Limit=1, NextToken=answer["NextToken"])
    assert [n for n in seen if n.startswith(prefix)] == names
    for n in names:
        kinesis.delete_stream(StreamName=n)


def test_put_and_get_records_all_iterator_types(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=1)
    shard = "shardId-000000000000"
    first = kinesis.put_record(StreamName=name, Data=b"\x00first\xff", PartitionKey="k")
    assert first["ShardId"] == shard and first["EncryptionType"] == "NONE"
    latest = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="LATEST")[
        "ShardIterator"
    ]
    batch = kinesis.put_records(
        StreamARN=ARN_PREFIX + name,
        Records=[{"Data": b"r%d" % i, "PartitionKey": f"p{i}"} for i in range(5)],
    )
    assert batch["FailedRecordCount"] == 0 and len(batch["Records"]) == 5
    seqs = [first["SequenceNumber"]] + [r["SequenceNumber"] for r in batch["Records"]]
    assert seqs == sorted(seqs)

    everything = drain(kinesis, name, shard)
    assert [r["Data"] for r in everything] == [b"\x00first\xff"] + [b"r%d" % i for i in range(5)]
    assert [r["SequenceNumber"] for r in everything] == seqs
    arrival = everything[0]["ApproximateArrivalTimestamp"]
    assert abs(arrival - datetime.now(UTC)) < timedelta(minutes=1)
    assert "EncryptionType" not in everything[0] or everything[0]["EncryptionType"] == "NONE"

    page = kinesis.get_records(ShardIterator=latest)
    assert [r["Data"] for r in page["Records"]] == [b"r%d" % i for i in range(5)]
    limited = kinesis.get_records(ShardIterator=latest, Limit=2)
    assert [r["Data"] for r in limited["Records"]] == [b"r0", b"r1"]
    following = kinesis.get_records(ShardIterator=limited["NextShardIterator"], Limit=10)
    assert [r["Data"] for r in following["Records"]] == [b"r2", b"r3", b"r4"]
    assert following["MillisBehindLatest"] == 0

    def read_from(kind: str, **extra: Any) -> list[bytes]:
        it = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType=kind, **extra
        )["ShardIterator"]
        return [r["Data"] for r in kinesis.get_records(ShardIterator=it)["Records"]]

    assert read_from("AT_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[2]) == [
        b"r1",
        b"r2",
        b"r3",
        b"r4",
    ]
    assert read_from("AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[4]) == [b"r4"]
    assert read_from("AT_TIMESTAMP", Timestamp=datetime.now(UTC) - timedelta(hours=1))[0] == (
        b"\x00first\xff"
    )
    assert read_from("AT_TIMESTAMP", Timestamp=datetime.now(UTC) + timedelta(minutes=1)) == []
    kinesis.delete_stream(StreamName=name)


def test_record_and_iterator_errors(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=2)
    shard = "shardId-000000000000"
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("put_record", {"StreamName": "missing", "Data": b"x", "PartitionKey": "k"}, "Resource"),
        ("put_record", {"StreamName": name, "Data": b"x" * (1024 * 1024 + 1), "PartitionKey": "k"}, "Validation"),
        ("put_record", {"StreamName": name, "Data": b"x", "PartitionKey": "k", "ExplicitHashKey": str(2**128)}, "InvalidArgument"),
        ("put_records", {"StreamName": name, "Records": [{"Data": b"x", "PartitionKey": "k"}] * 501}, "Validation"),
        ("put_records", {"StreamName": name, "Records": [{"Data": b"x" * (1024 * 1024), "PartitionKey": "k"}] * 6}, "InvalidArgument"),
        ("get_shard_iterator", {"StreamName": name, "ShardId": "shardId-000000000009", "ShardIteratorType": "LATEST"}, "Resource"),
        ("get_shard_iterator", {"StreamName": name, "ShardId": shard, "ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": make_sequence(1, 0)}, "InvalidArgument"),
        ("get_shard_iterator", {"StreamName": name, "ShardId": shard, "ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": make_sequence(0, 99)}, "InvalidArgument"),
        ("get_records", {"ShardIterator": "AAAA" * 20}, "InvalidArgument"),
        ("describe_stream", {"StreamName": name, "StreamARN": ARN_PREFIX + "other"}, "InvalidArgument"),
        ("describe_stream", {"StreamARN": f"arn:aws:kinesis:eu-west-1:000000000000:stream/{name}"}, "Resource"),
        ("describe_stream", {"StreamARN": "arn:nope"}, "InvalidArgument"),
    ]  # fmt: skip
    for method, kwargs, expected in cases:
        with pytest.raises(ClientError) as exc:
            getattr(kinesis, method)(**kwargs)
        code, status = error_code(exc)
        assert code.startswith(expected), (method, kwargs.keys(), code)
        assert status == 400
    kinesis.delete_stream(StreamName=name)


def test_expired_iterator(kinesis: Any, gateway: ServerProcess, name: str) -> None:
    from streamd.frontends.kinesis.http import ITERATOR_KEY_FILE
    from streamd.frontends.kinesis.iterators import ShardIterator, encode_iterator

    kinesis.create_stream(StreamName=name, ShardCount=1)
    stream_id = gateway.stream_dir(name).name
    key = (gateway.data_dir / ITERATOR_KEY_FILE).read_bytes()
    old_ms = int(time.time() * 1000) - 6 * 60 * 1000
    token = encode_iterator(key, ShardIterator(name, stream_id, 0, 0, old_ms))
    with pytest.raises(kinesis.exceptions.ExpiredIteratorException):
        kinesis.get_records(ShardIterator=token)
    fresh = encode_iterator(key, ShardIterator(name, stream_id, 0, 0, old_ms + 2 * 60 * 1000))
    assert kinesis.get_records(ShardIterator=fresh)["Records"] == []
    kinesis.delete_stream(StreamName=name)


def test_retention_rules(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=48)
    with pytest.raises(ClientError) as exc:
        kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=30)
    assert error_code(exc) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as exc:
        kinesis.decrease_stream_retention_period(StreamName=name, RetentionPeriodHours=72)
    assert error_code(exc) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as exc:
        kinesis.decrease_stream_retention_period(StreamName=name, RetentionPeriodHours=12)
    assert error_code(exc)[0] == "InvalidArgumentException"
    kinesis.decrease_stream_retention_period(StreamARN=ARN_PREFIX + name, RetentionPeriodHours=36)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["RetentionPeriodHours"] == 36
    kinesis.delete_stream(StreamName=name)


def test_tags_by_name_and_by_arn(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = ARN_PREFIX + name
    kinesis.add_tags_to_stream(StreamName=name, Tags={"a": "1", "b": "2", "c": ""})
    listed = kinesis.list_tags_for_stream(StreamName=name, Limit=2)
    assert listed["Tags"] == [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
    assert listed["HasMoreTags"] is True
    rest = kinesis.list_tags_for_stream(StreamName=name, ExclusiveStartTagKey="b")
    assert rest == {**rest, "Tags": [{"Key": "c", "Value": ""}], "HasMoreTags": False}
    kinesis.remove_tags_from_stream(StreamName=name, TagKeys=["a"])
    kinesis.tag_resource(ResourceARN=arn, Tags={"d": "4"})
    kinesis.untag_resource(ResourceARN=arn, TagKeys=["b"])
    assert kinesis.list_tags_for_resource(ResourceARN=arn)["Tags"] == [
        {"Key": "c", "Value": ""},
        {"Key": "d", "Value": "4"},
    ]
    with pytest.raises(ClientError) as exc:
        kinesis.add_tags_to_stream(StreamName=name, Tags={f"t{i}": "v" for i in range(49)})
    assert error_code(exc)[0] == "LimitExceededException"
    with pytest.raises(ClientError) as exc:  # a call may carry 200, a stream holds 50
        kinesis.add_tags_to_stream(StreamName=name, Tags={f"u{i}": "v" for i in range(60)})
    assert error_code(exc)[0] == "LimitExceededException"
    with pytest.raises(ClientError) as exc:
        kinesis.tag_resource(ResourceARN=arn, Tags={"x" * 129: "v"})
    assert error_code(exc)[0] in ("InvalidArgumentException", "ValidationException")
    kinesis.delete_stream(StreamName=name)


def test_split_merge_seen_through_list_shards_and_get_records(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=2)
    before = [
        kinesis.put_record(StreamName=name, Data=b"before", PartitionKey="x", ExplicitHashKey="5")
    ]
    kinesis.split_shard(
        StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**125)
    )
    shards = kinesis.list_shards(StreamName=name)["Shards"]
    assert [s["ShardId"] for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
    closed = shards[0]
    # the last record's own number, as in Kinesis
    assert closed["SequenceNumberRange"]["EndingSequenceNumber"] == before[0]["SequenceNumber"]
    assert shards[2]["ParentShardId"] == "shardId-000000000000"
    assert shards[3]["HashKeyRange"]["StartingHashKey"] == str(2**125)
    after = kinesis.put_record(
        StreamName=name, Data=b"after", PartitionKey="x", ExplicitHashKey="5"
    )
    assert after["ShardId"] == "shardId-000000000002"

    it = kinesis.get_shard_iterator(
        StreamName=name, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    page = kinesis.get_records(ShardIterator=it)
    assert [r["Data"] for r in page["Records"]] == [b"before"]
    assert page.get("NextShardIterator") is None
    assert [c["ShardId"] for c in page["ChildShards"]] == [
        "shardId-000000000002",
        "shardId-000000000003",
    ]
    assert page["ChildShards"][0]["ParentShards"] == ["shardId-000000000000"]
    assert before[0]["ShardId"] == "shardId-000000000000"

    kinesis.merge_shards(
        StreamName=name,
        ShardToMerge="shardId-000000000002",
        AdjacentShardToMerge="shardId-000000000003",
    )
    open_now = kinesis.list_shards(StreamName=name, ShardFilter={"Type": "AT_LATEST"})["Shards"]
    assert [s["ShardId"] for s in open_now] == ["shardId-000000000001", "shardId-000000000004"]
    merged = open_now[1]
    assert {merged["ParentShardId"], merged["AdjacentParentShardId"]} == {
        "shardId-000000000002",
        "shardId-000000000003",
    }
    roots = kinesis.list_shards(StreamName=name, ShardFilter={"Type": "AT_TRIM_HORIZON"})
    assert [s["ShardId"] for s in roots["Shards"]] == [
        "shardId-000000000000",
        "shardId-000000000001",
    ]
    after_id = kinesis.list_shards(
        StreamName=name, ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000002"}
    )
    assert [s["ShardId"] for s in after_id["Shards"]] == [
        "shardId-000000000003",
        "shardId-000000000004",
    ]
    assert len(kinesis.list_shards(StreamName=name, MaxResults=5000)["Shards"]) == 5
    first = kinesis.list_shards(StreamName=name, MaxResults=2)
    second = kinesis.list_shards(NextToken=first["NextToken"], MaxResults=2)
    third = kinesis.list_shards(NextToken=second["NextToken"])
    ids = [s["ShardId"] for page in (first, second, third) for s in page["Shards"]]
    assert ids == [f"shardId-00000000000{i}" for i in range(5)]
    assert "NextToken" not in third
    with pytest.raises(ClientError) as exc:
        kinesis.list_shards(StreamName=name, NextToken=first["NextToken"])
    assert error_code(exc)[0] == "InvalidArgumentException"
    with pytest.raises(ClientError) as exc:
        kinesis.split_shard(
            StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey="7"
        )
    assert error_code(exc)[0] == "InvalidArgumentException"
    with pytest.raises(ClientError) as exc:
        kinesis.merge_shards(
            StreamName=name,
            ShardToMerge="shardId-000000000001",
            AdjacentShardToMerge="shardId-000000000042",
        )
    assert error_code(exc)[0] == "ResourceNotFoundException"
    kinesis.delete_stream(StreamName=name)


def test_list_shards_timestamp_filters(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=2)
    time.sleep(0.02)
    before_split = datetime.now(UTC)
    time.sleep(0.02)
    kinesis.split_shard(
        StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**125)
    )
    time.sleep(0.02)
    after_split = datetime.now(UTC)

    def ids(kind: str, at: datetime) -> list[str]:
        page = kinesis.list_shards(StreamName=name, ShardFilter={"Type": kind, "Timestamp": at})
        return [s["ShardId"] for s in page["Shards"]]

    assert ids("AT_TIMESTAMP", before_split) == ["shardId-000000000000", "shardId-000000000001"]
    assert ids("AT_TIMESTAMP", after_split) == [
        "shardId-000000000001",
        "shardId-000000000002",
        "shardId-000000000003",
    ]
    assert ids("FROM_TIMESTAMP", before_split) == [f"shardId-00000000000{i}" for i in range(4)]
    assert ids("FROM_TIMESTAMP", after_split) == ids("AT_TIMESTAMP", after_split)
    first = kinesis.list_shards(
        StreamName=name,
        ShardFilter={"Type": "AT_TIMESTAMP", "Timestamp": after_split},
        MaxResults=2,
    )
    rest = kinesis.list_shards(NextToken=first["NextToken"])
    assert [s["ShardId"] for s in first["Shards"] + rest["Shards"]] == ids(
        "AT_TIMESTAMP", after_split
    )
    kinesis.delete_stream(StreamName=name)


def test_update_shard_count(kinesis: Any, name: str) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=2)
    for i in range(20):
        kinesis.put_record(StreamName=name, Data=b"%d" % i, PartitionKey=f"k{i}")
    answer = kinesis.update_shard_count(
        StreamName=name, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
    )
    assert (answer["CurrentShardCount"], answer["TargetShardCount"]) == (2, 4)
    deadline = time.monotonic() + 20
    while True:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            break
        with pytest.raises(ClientError) as exc:  # one reshard at a time, as in Kinesis
            kinesis.update_shard_count(
                StreamName=name, TargetShardCount=3, ScalingType="UNIFORM_SCALING"
            )
        assert error_code(exc)[0] in ("ResourceInUseException",)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert summary["OpenShardCount"] == 4
    with pytest.raises(ClientError) as exc:
        kinesis.update_shard_count(
            StreamName=name, TargetShardCount=9, ScalingType="UNIFORM_SCALING"
        )
    assert error_code(exc)[0] == "InvalidArgumentException"
    shards = kinesis.list_shards(StreamName=name)["Shards"]
    data = [r["Data"] for s in shards for r in drain(kinesis, name, s["ShardId"])]
    assert sorted(data) == sorted(b"%d" % i for i in range(20))
    kinesis.delete_stream(StreamName=name)


def test_stream_encryption_without_a_keyring_is_refused(kinesis: Any) -> None:
    """Start/StopStreamEncryption are supported (test_encryption_at_rest.py), but this gateway
    has no --keyring: starting is refused with a clear message, and nothing changes."""
    name = f"enc-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    with pytest.raises(ClientError) as exc:
        kinesis.start_stream_encryption(StreamName=name, EncryptionType="KMS", KeyId="alias/k")
    assert error_code(exc) == ("InvalidArgumentException", 400)
    assert "--keyring" in exc.value.response["Error"]["Message"]
    described = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    assert described["EncryptionType"] == "NONE"
    with pytest.raises(ClientError) as exc:
        kinesis.stop_stream_encryption(StreamName="nope", EncryptionType="KMS", KeyId="alias/k")
    assert error_code(exc)[0] == "ResourceNotFoundException"
    kinesis.delete_stream(StreamName=name)
