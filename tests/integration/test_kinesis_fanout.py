"""Enhanced fan-out through boto3, unchanged, against a real ``streamd serve`` process.

Consumers: register, describe (by ARN and by stream + name), list with pagination, deregister,
the 20-consumer limit, and no inheritance across a re-created stream. SubscribeToShard: from
TRIM_HORIZON, LATEST, AT_TIMESTAMP; records put while subscribed arrive within a bound;
ContinuationSequenceNumber resumes with neither gap nor duplicate; one subscription per
consumer and shard; deregistration ends a live subscription; a split shard's stream ends with
its ChildShards; a CBOR request gets CBOR events.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, EventStreamError

from streamd.testing import ServerProcess

from .aws import kinesis_client

REGION = "us-east-1"
SHARD0 = "shardId-000000000000"
ARRIVAL_S_MAX = 3.0  # a record put while subscribed must arrive within this
# Heartbeat events come every 5 s, so a 10 s read timeout never fires on a live stream.
READ_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("fanout") / "data", fsync="always", kinesis=True
    ) as process:
        yield process


@pytest.fixture(scope="module")
def kinesis(gateway: ServerProcess) -> Any:
    return kinesis_client(gateway, read_timeout=READ_TIMEOUT_S)


@pytest.fixture
def stream(kinesis: Any) -> tuple[str, str]:
    name = f"f-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return name, arn


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _put(kinesis: Any, name: str, datas: list[bytes]) -> None:
    answer = kinesis.put_records(
        StreamName=name, Records=[{"Data": d, "PartitionKey": "k"} for d in datas]
    )
    assert answer["FailedRecordCount"] == 0


def _collect(events: Any, count: int, timeout_s: float = 10.0) -> tuple[list[Any], list[Any]]:
    """Records from an EventStream until ``count`` arrived; also the events seen."""
    records: list[Any] = []
    seen: list[Any] = []
    deadline = time.monotonic() + timeout_s
    for event in events:
        seen.append(event["SubscribeToShardEvent"])
        records += event["SubscribeToShardEvent"]["Records"]
        if len(records) >= count or time.monotonic() > deadline:
            break
    return records, seen


def _subscribe(kinesis: Any, arn: str, position: dict[str, Any], shard: str = SHARD0) -> Any:
    return kinesis.subscribe_to_shard(ConsumerARN=arn, ShardId=shard, StartingPosition=position)[
        "EventStream"
    ]


def test_register_describe_list_deregister(kinesis: Any, stream: tuple[str, str]) -> None:
    _, stream_arn = stream
    consumer = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="app.1")[
        "Consumer"
    ]
    assert consumer["ConsumerStatus"] == "ACTIVE"
    assert consumer["ConsumerARN"].startswith(f"{stream_arn}/consumer/app.1:")
    created = consumer["ConsumerCreationTimestamp"]
    assert abs(created - datetime.now(UTC)) < timedelta(seconds=30)
    by_arn = kinesis.describe_stream_consumer(ConsumerARN=consumer["ConsumerARN"])
    by_name = kinesis.describe_stream_consumer(StreamARN=stream_arn, ConsumerName="app.1")
    assert by_arn["ConsumerDescription"] == by_name["ConsumerDescription"]
    assert by_arn["ConsumerDescription"]["StreamARN"] == stream_arn
    listed = kinesis.list_stream_consumers(StreamARN=stream_arn)["Consumers"]
    assert [c["ConsumerARN"] for c in listed] == [consumer["ConsumerARN"]]
    with pytest.raises(ClientError) as taken:
        kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="app.1")
    assert _code(taken) == "ResourceInUseException"
    kinesis.deregister_stream_consumer(ConsumerARN=consumer["ConsumerARN"])
    with pytest.raises(ClientError) as gone:
        kinesis.describe_stream_consumer(ConsumerARN=consumer["ConsumerARN"])
    assert _code(gone) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as gone_again:
        kinesis.deregister_stream_consumer(StreamARN=stream_arn, ConsumerName="app.1")
    assert _code(gone_again) == "ResourceNotFoundException"
    assert kinesis.list_stream_consumers(StreamARN=stream_arn)["Consumers"] == []


def test_twenty_consumers_at_most_and_pagination(kinesis: Any, stream: tuple[str, str]) -> None:
    _, stream_arn = stream
    names = sorted(f"c{i:02d}" for i in range(20))
    for consumer_name in names:
        kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName=consumer_name)
    with pytest.raises(ClientError) as over:
        kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c20")
    assert _code(over) == "LimitExceededException"
    pages = kinesis.get_paginator("list_stream_consumers").paginate(
        StreamARN=stream_arn, PaginationConfig={"PageSize": 7}
    )
    sizes, listed = [], []
    for page in pages:
        sizes.append(len(page["Consumers"]))
        listed += [c["ConsumerName"] for c in page["Consumers"]]
    assert sizes == [7, 7, 6] and listed == names


def test_errors_for_unknown_streams_consumers_and_shards(
    kinesis: Any, stream: tuple[str, str]
) -> None:
    _, stream_arn = stream
    missing_stream = stream_arn + "-missing"
    with pytest.raises(ClientError) as no_stream:
        kinesis.register_stream_consumer(StreamARN=missing_stream, ConsumerName="c")
    assert _code(no_stream) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as no_consumer:
        kinesis.describe_stream_consumer(StreamARN=stream_arn, ConsumerName="nobody")
    assert _code(no_consumer) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as bad_arn:
        kinesis.describe_stream_consumer(ConsumerARN="arn:aws:kinesis:nope")
    assert _code(bad_arn) == "InvalidArgumentException"
    with pytest.raises(ClientError) as bad_name:
        kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="a b")
    assert _code(bad_name) == "ValidationException"
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    with pytest.raises(ClientError) as no_shard:
        _subscribe(kinesis, arn, {"Type": "TRIM_HORIZON"}, shard="shardId-000000000009")
    assert _code(no_shard) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as bad_sequence:
        _subscribe(kinesis, arn, {"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": "12"})
    assert _code(bad_sequence) == "InvalidArgumentException"


def test_a_recreated_stream_does_not_inherit_consumers(
    kinesis: Any, stream: tuple[str, str]
) -> None:
    name, stream_arn = stream
    old = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"]
    with pytest.raises(ClientError) as in_use:
        kinesis.delete_stream(StreamName=name)
    assert _code(in_use) == "ResourceInUseException"
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    kinesis.create_stream(StreamName=name, ShardCount=1)
    assert kinesis.list_stream_consumers(StreamARN=stream_arn)["Consumers"] == []
    with pytest.raises(ClientError) as gone:
        kinesis.describe_stream_consumer(ConsumerARN=old["ConsumerARN"])
    assert _code(gone) == "ResourceNotFoundException"


def test_subscribe_from_trim_horizon_then_records_are_pushed_as_they_commit(
    gateway: ServerProcess, kinesis: Any, stream: tuple[str, str]
) -> None:
    name, stream_arn = stream
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    _put(kinesis, name, [f"old-{i}".encode() for i in range(10)])
    events = _subscribe(kinesis, arn, {"Type": "TRIM_HORIZON"})
    records, _ = _collect(events, 10)
    assert [r["Data"] for r in records] == [f"old-{i}".encode() for i in range(10)]
    put_at: list[float] = []

    def put_later() -> None:
        time.sleep(0.3)
        writer_client = kinesis_client(gateway, read_timeout=READ_TIMEOUT_S)
        try:
            put_at.append(time.monotonic())
            _put(writer_client, name, [f"new-{i}".encode() for i in range(5)])
        finally:
            writer_client.close()

    writer = threading.Thread(target=put_later)
    writer.start()
    live, _ = _collect(events, 5)
    arrived_at = time.monotonic()
    writer.join(10)
    events.close()
    assert [r["Data"] for r in live] == [f"new-{i}".encode() for i in range(5)]
    assert arrived_at - put_at[0] < ARRIVAL_S_MAX


def test_subscribe_latest_and_at_timestamp(
    gateway: ServerProcess, kinesis: Any, stream: tuple[str, str]
) -> None:
    name, stream_arn = stream
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    _put(kinesis, name, [b"before"])
    time.sleep(0.05)
    cut = datetime.now(UTC)
    time.sleep(0.05)
    events = _subscribe(kinesis, arn, {"Type": "LATEST"})
    first, _ = _collect(events, 0)  # the first event comes at once, empty
    assert first == []
    _put(kinesis, name, [b"after"])
    records, _ = _collect(events, 1)
    assert [r["Data"] for r in records] == [b"after"]
    events.close()
    time.sleep(TAKEOVER_WAIT_S)
    at_time = _subscribe(kinesis, arn, {"Type": "AT_TIMESTAMP", "Timestamp": cut})
    records, _ = _collect(at_time, 1)
    at_time.close()
    assert [r["Data"] for r in records] == [b"after"]


# A closed subscription frees its slot when the server notices the hang-up; until then a new one
# within 5 s is refused. The server notices at once, but the test need not race it.
TAKEOVER_WAIT_S = 0.2


def test_continuation_resumes_without_gap_or_duplicate(
    kinesis: Any, stream: tuple[str, str]
) -> None:
    name, stream_arn = stream
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    expected = [f"r{i}".encode() for i in range(30)]
    _put(kinesis, name, expected[:12])
    events = _subscribe(kinesis, arn, {"Type": "TRIM_HORIZON"})
    got, seen = _collect(events, 12)
    events.close()
    continuation = seen[-1]["ContinuationSequenceNumber"]
    assert continuation == got[-1]["SequenceNumber"]
    _put(kinesis, name, expected[12:])
    time.sleep(TAKEOVER_WAIT_S)
    resumed = _subscribe(
        kinesis, arn, {"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": continuation}
    )
    more, _ = _collect(resumed, 18)
    resumed.close()
    assert [r["Data"] for r in got + more] == expected
    sequences = [int(r["SequenceNumber"]) for r in got + more]
    assert sequences == sorted(set(sequences))


def test_one_subscription_per_consumer_and_shard_and_deregister_ends_it(
    kinesis: Any, stream: tuple[str, str]
) -> None:
    _, stream_arn = stream
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    events = _subscribe(kinesis, arn, {"Type": "LATEST"})
    _collect(events, 0)
    with pytest.raises(ClientError) as busy:
        _subscribe(kinesis, arn, {"Type": "LATEST"})
    assert _code(busy) == "ResourceInUseException"
    kinesis.deregister_stream_consumer(ConsumerARN=arn)
    with pytest.raises(EventStreamError) as ended:
        _collect(events, 1)
    events.close()
    assert ended.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_split_shards_subscription_ends_with_its_child_shards(
    kinesis: Any, stream: tuple[str, str]
) -> None:
    name, stream_arn = stream
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    _put(kinesis, name, [b"one", b"two"])
    kinesis.split_shard(StreamName=name, ShardToSplit=SHARD0, NewStartingHashKey=str(2**127))
    deadline = time.monotonic() + 10
    while (
        kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        != "ACTIVE"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    events = _subscribe(kinesis, arn, {"Type": "TRIM_HORIZON"})
    seen = [event["SubscribeToShardEvent"] for event in events]  # the stream ends by itself
    events.close()
    assert [r["Data"] for e in seen for r in e["Records"]] == [b"one", b"two"]
    last = seen[-1]
    assert "ContinuationSequenceNumber" not in last
    assert sorted(c["ShardId"] for c in last["ChildShards"]) == [
        "shardId-000000000001",
        "shardId-000000000002",
    ]
    assert all(c["ParentShards"] == [SHARD0] for c in last["ChildShards"])


def test_a_cbor_subscription_gets_cbor_events(
    gateway: ServerProcess, kinesis: Any, stream: tuple[str, str]
) -> None:
    """What the Java SDK sends: a CBOR body; the events come back CBOR, blobs as byte strings."""
    import http.client
    from urllib.parse import urlparse

    from streamd.frontends.kinesis import cbor
    from streamd.frontends.kinesis.eventstream import EventStreamDecoder

    name, stream_arn = stream
    arn = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="c")["Consumer"][
        "ConsumerARN"
    ]
    _put(kinesis, name, [b"\x00\xffbinary"])
    url = urlparse(gateway.kinesis_endpoint)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    body = cbor.dumps(
        {"ConsumerARN": arn, "ShardId": SHARD0, "StartingPosition": {"Type": "TRIM_HORIZON"}}
    )
    headers = {
        "Content-Type": "application/x-amz-cbor-1.1",
        "X-Amz-Target": "Kinesis_20131202.SubscribeToShard",
    }
    try:
        connection.request("POST", "/", body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type") == "application/vnd.amazon.eventstream"
        decoder = EventStreamDecoder()
        messages = []
        while len(messages) < 2:
            decoder.receive_data(response.read1(65536))
            while (message := decoder.next_message()) is not None:
                messages.append(message)
    finally:
        connection.close()
    assert [m.headers[":event-type"] for m in messages[:2]] == [
        "initial-response",
        "SubscribeToShardEvent",
    ]
    assert messages[1].headers[":content-type"] == "application/x-amz-cbor-1.1"
    event = cbor.loads(messages[1].payload)
    assert [r["Data"] for r in event["Records"]] == [b"\x00\xffbinary"]
    assert isinstance(event["Records"][0]["ApproximateArrivalTimestamp"], cbor.EpochTag)
