"""MillisBehindLatest through boto3 against a real ``streamd serve``: how far, in ms of arrival
time, the last record returned is behind the shard's newest record; 0 only at the tip.

Two records put a second apart make a lag of about 1000 ms between them: a reader that has
only the first is at least 900 ms behind, one that has the second is at the tip. Checked through
GetRecords (Limit 1, so the read holds more than the answer returns), after a restart (the
newest arrival time then comes from the log's last batch), and through SubscribeToShard (big
incompressible records, so one read and one event hold only the first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamd.testing import ServerProcess

from .aws import kinesis_client

SHARD0 = "shardId-000000000000"
GAP_S = 1.0
BEHIND_MS_MIN = 900


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", kinesis=True) as process:
        yield process


def _put_two_apart(kinesis: Any, first: bytes, second: bytes) -> None:
    kinesis.create_stream(StreamName="lag", ShardCount=1)
    kinesis.put_record(StreamName="lag", Data=first, PartitionKey="k")
    time.sleep(GAP_S)
    kinesis.put_record(StreamName="lag", Data=second, PartitionKey="k")


def _trim_horizon(kinesis: Any) -> str:
    iterator: str = kinesis.get_shard_iterator(
        StreamName="lag", ShardId=SHARD0, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return iterator


def _read_one_by_one(kinesis: Any) -> list[int]:
    """MillisBehindLatest of three GetRecords with Limit 1 from TRIM_HORIZON."""
    iterator = _trim_horizon(kinesis)
    lags = []
    for expected_records in (1, 1, 0):
        page = kinesis.get_records(ShardIterator=iterator, Limit=1)
        assert len(page["Records"]) == expected_records
        lags.append(page["MillisBehindLatest"])
        iterator = page["NextShardIterator"]
    return lags


def test_get_records_behind_then_at_the_tip(gateway: ServerProcess) -> None:
    kinesis = kinesis_client(gateway, read_timeout=10)
    _put_two_apart(kinesis, b"first", b"second")
    first, second, empty = _read_one_by_one(kinesis)
    assert first >= BEHIND_MS_MIN
    assert first < 60_000  # a lag, not an epoch timestamp
    assert second == 0 and empty == 0
    whole = kinesis.get_records(ShardIterator=_trim_horizon(kinesis))
    assert len(whole["Records"]) == 2 and whole["MillisBehindLatest"] == 0


def test_get_records_lag_survives_a_restart(gateway: ServerProcess) -> None:
    _put_two_apart(kinesis_client(gateway, read_timeout=10), b"first", b"second")
    assert gateway.terminate() == 0
    gateway.restart()
    first, second, _ = _read_one_by_one(kinesis_client(gateway, read_timeout=10))
    assert first >= BEHIND_MS_MIN and second == 0


def test_subscribe_to_shard_behind_then_at_the_tip(gateway: ServerProcess) -> None:
    kinesis = kinesis_client(gateway, read_timeout=10)
    # Incompressible and together over a subscription read's 1 MiB: one event each.
    _put_two_apart(kinesis, os.urandom(700_000), os.urandom(700_000))
    arn = kinesis.describe_stream_summary(StreamName="lag")["StreamDescriptionSummary"]["StreamARN"]
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="lag")["Consumer"]
    events = kinesis.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"],
        ShardId=SHARD0,
        StartingPosition={"Type": "TRIM_HORIZON"},
    )["EventStream"]
    seen: list[tuple[int, int]] = []  # (records, MillisBehindLatest) per event
    deadline = time.monotonic() + 10
    for event in events:
        body = event["SubscribeToShardEvent"]
        seen.append((len(body["Records"]), body["MillisBehindLatest"]))
        if sum(n for n, _ in seen) >= 2 or time.monotonic() > deadline:
            break
    events.close()
    assert [n for n, _ in seen] == [1, 1], seen
    assert seen[0][1] >= BEHIND_MS_MIN and seen[1][1] == 0
