"""ON_DEMAND streams that scale themselves, over real TCP: a stream created through boto3 as
ON_DEMAND, a real load through the native Producer against low custom write quotas (so a shard
is hot within seconds), the scaler's split, and every record read back in order per key across
it, checked against the parent/child lineage (docs/operations.md, "On-demand streams")."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio
from botocore.config import Config

from streamd.testing import ServerProcess
from streamd_client import connect
from streamd_client.model import hash_bytes_of
from streamd_client.results import ShardDescription

WRITE_RECORDS_PER_S = 50
SPLIT_WAIT_S = 30.0  # the scaler needs ~3 s of load to see a shard hot, 2 s more to split


@pytest.fixture(scope="module")
def scaling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--shard-write-records-per-s", str(WRITE_RECORDS_PER_S), "--on-demand-shards-max", "6"]
    data: Path = tmp_path_factory.mktemp("on-demand") / "data"
    with ServerProcess(data, fsync="never", kinesis=True, extra_args=args) as process:
        yield process


def _kinesis(server: ServerProcess) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=server.kinesis_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}),
    )


def _holds(shard: ShardDescription, key: str) -> bool:
    point = int.from_bytes(hash_bytes_of(key), "big")
    return shard.hash_key_start <= point <= shard.hash_key_end


def _mode(kinesis: Any, name: str) -> str:
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    return str(summary["StreamModeDetails"]["StreamMode"])


def test_update_stream_mode_switches_both_ways(scaling_server: ServerProcess) -> None:
    kinesis = _kinesis(scaling_server)
    name = f"od-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    assert _mode(kinesis, name) == "PROVISIONED"
    kinesis.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert _mode(kinesis, name) == "ON_DEMAND"
    kinesis.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
    assert _mode(kinesis, name) == "PROVISIONED"
    shards = kinesis.list_shards(StreamName=name)["Shards"]
    assert len(shards) == 2  # the mode alone changes no shard


async def test_a_hot_on_demand_stream_splits_and_keeps_order_per_key(
    scaling_server: ServerProcess,
) -> None:
    kinesis = _kinesis(scaling_server)
    name = f"od-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert _mode(kinesis, name) == "ON_DEMAND"
    keys = [f"key-{i}" for i in range(12)]
    sent = dict.fromkeys(keys, 0)
    async with connect(scaling_server.endpoint) as client:
        first = await client.describe_stream(name)
        assert len([s for s in first.shards if s.ending_sequence is None]) == 4
        producer = client.producer(name, buffer_records_max=400, linger_ms=10)
        split_at: float | None = None
        started = time.monotonic()
        async with producer:
            while split_at is None or time.monotonic() - split_at < 1.0:
                assert time.monotonic() - started < SPLIT_WAIT_S, "no split came"
                for _ in range(3):  # about 300 records/s offered, 1.5 times the quota
                    for key in keys:
                        await producer.put(f"{key}:{sent[key]}".encode(), key)
                        sent[key] += 1
                    await trio.sleep(0.1)
                if split_at is None:
                    now = await client.describe_stream(name)
                    if any(s.ending_sequence is not None for s in now.shards):
                        split_at = time.monotonic()
        assert producer.stats.failed_records == 0
        assert producer.stats.throttled_batches > 0  # the load was over the quota
        final = await client.describe_stream(name)
        per_shard: dict[str, list[tuple[str, int]]] = {}
        for shard in final.shards:
            records = per_shard[shard.shard_id] = []
            async for record in client.reader(name, shard.shard_id):
                key, _, n = record.data.decode().partition(":")
                assert key == record.partition_key
                records.append((key, int(n)))
        in_lineage_order: dict[str, list[int]] = {k: [] for k in keys}
        async with client.stream_reader(name) as reader:
            async for record in reader:
                key, _, n = record.data.decode().partition(":")
                in_lineage_order[key].append(int(n))
    closed = [s for s in final.shards if s.ending_sequence is not None]
    assert closed, "the scaler split nothing"
    for parent in closed:
        children = [s for s in final.shards if s.parent_shard_id == parent.shard_id]
        assert len(children) == 2
        assert {c.hash_key_start for c in children} == {
            parent.hash_key_start,
            (parent.hash_key_start + parent.hash_key_end + 1) // 2,
        }
        moved = [k for k in keys if _holds(parent, k) and per_shard[parent.shard_id]]
        for key in moved:  # the parent's records of a key come before its child's
            child = next(c for c in children if _holds(c, key))
            before = [n for k, n in per_shard[parent.shard_id] if k == key]
            after = [n for k, n in per_shard[child.shard_id] if k == key]
            assert before + after == list(range(len(before) + len(after)))
    for key in keys:  # every record once, in the order put, whole-stream reading included
        assert in_lineage_order[key] == list(range(sent[key])), key
        stored = sorted(n for records in per_shard.values() for k, n in records if k == key)
        assert stored == list(range(sent[key]))
    decisions = [
        json.loads(line)
        for line in scaling_server.log_text().splitlines()
        if '"on_demand.split"' in line
    ]
    assert any(d.get("stream") == name and d["ratio"] > 0.8 for d in decisions)
