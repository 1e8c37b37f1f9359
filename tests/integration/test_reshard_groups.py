"""Resizing a stream under load while a 3-worker consumer group processes it (real server).

A producer writes keyed records continuously (each record's data names its key and a per-key
counter) and records, per key, the order in which the records were acknowledged. Three
in-process group workers (each with its own connection) append what they process to one list,
in processing order. Meanwhile the stream is resized 4 -> 8 -> 4 -> 3 (Kinesis's bounds allow at
most halving per call, so 8 -> 3 takes two calls). Afterwards:

- every acknowledged record was processed;
- per partition key, the order records were first processed equals the acknowledged order
  (the coordinator leases children only after their parents were processed to SHARD_END);
- every closed shard is FINISHED in the group (checkpointed SHARD_END).

The default run is short (trio); ``--slow`` runs a longer load on asyncio with more resizes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from streamd_client import connect, group_admin
from streamd_client.group import GroupWorker
from streamd_client.model import even_hash_ranges

pytestmark = pytest.mark.anyio

WORKER_OPTIONS: dict[str, Any] = {
    "read_wait_ms": 200,
    "checkpoint_every_records": 50,
    "checkpoint_every_s": 0.2,
}
KEY_COUNT = 32


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with anyio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state other tasks change
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


class Load:
    """The producer's record of what was acknowledged, per key, in acknowledgement order."""

    def __init__(self) -> None:
        self.acked: dict[str, list[int]] = defaultdict(list)
        self.failed: list[str] = []
        self.stop = anyio.Event()

    @property
    def acked_data(self) -> set[bytes]:
        return {f"{k}|{c}".encode() for k, counters in self.acked.items() for c in counters}

    async def run(self, endpoint: str, stream: str, interval_s: float) -> None:
        """Put one record per key every ``interval_s`` through the shard-aware Producer (which
        re-routes across reshards), settling each round before the next."""
        counter = 0
        async with connect(endpoint) as client, client.producer(stream, linger_ms=2) as producer:
            while not self.stop.is_set():
                keys = [f"k{i:02d}" for i in range(KEY_COUNT)]
                pending = [
                    (key, await producer.put(f"{key}|{counter}".encode(), key)) for key in keys
                ]
                for key, put in pending:
                    try:
                        await put.result()
                    except Exception as exc:  # any failure is reported by the test
                        self.failed.append(f"{key}|{counter}: {exc!r}")
                    else:
                        self.acked[key].append(counter)
                counter += 1
                await anyio.sleep(interval_s)


async def run_worker(
    endpoint: str, stream: str, name: str, processed: list[tuple[str, int]], ready: anyio.Event
) -> None:
    async with connect(endpoint) as client:
        async with GroupWorker(client, stream, "g", member_id=name, **WORKER_OPTIONS) as worker:
            ready.set()
            async for batch in worker:
                for record in batch.records:
                    key, counter = record.data.decode().split("|")
                    assert record.partition_key == key
                    processed.append((key, int(counter)))


async def resize_under_group_load(
    endpoint: str, stream: str, sizes: list[int], settle_s: float, interval_s: float
) -> None:
    processed: list[tuple[str, int]] = []
    load = Load()
    async with connect(endpoint) as admin:
        await admin.create_stream(stream, sizes[0])
        async with anyio.create_task_group() as task_group:
            workers: list[anyio.Event] = []
            for i in range(3):
                ready = anyio.Event()
                workers.append(ready)
                task_group.start_soon(run_worker, endpoint, stream, f"w{i}", processed, ready)
            for ready in workers:
                await ready.wait()
            task_group.start_soon(load.run, endpoint, stream, interval_s)
            await anyio.sleep(settle_s)
            for size in sizes[1:]:
                operations = await admin.resize_stream(stream, size)
                assert operations > 0
                final = await admin.wait_for_active(stream, 30)
                ranges = [(s.hash_key_start, s.hash_key_end) for s in final.open_shards]
                assert ranges == even_hash_ranges(size)
                await anyio.sleep(settle_s)
            load.stop.set()
            await wait_until(lambda: bool(load.acked) and load.stop.is_set(), 5, "load stopped")
            await anyio.sleep(0.2)  # the producer's last round settles
            expected = load.acked_data
            await wait_until(
                lambda: {f"{k}|{c}".encode() for k, c in processed} >= expected,
                30,
                "every acknowledged record was processed",
            )
            view = await group_admin.describe_group(admin, stream, "g")
            task_group.cancel_scope.cancel()
        description = await admin.describe_stream(stream)

    assert not load.failed, load.failed[:5]
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for key, counter in processed:
        if (key, counter) not in seen:  # a re-delivery (at least once) keeps its first place
            seen.add((key, counter))
            first_seen[key].append(counter)
    assert set(first_seen) == set(load.acked)
    for key, acked in load.acked.items():
        assert first_seen[key] == acked, key
    closed = {s.shard_id for s in description.shards if not s.is_open}
    assert len(closed) >= sum(sizes[:-1])  # every resize closed shards
    status = {s["shard_id"]: s["status"] for s in view["shards"]}
    assert all(status[s] == "FINISHED" for s in closed), status


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_resize_4_8_4_3_under_load_keeps_every_record_and_per_key_order(
    endpoint: str, stream_name: str
) -> None:
    await resize_under_group_load(endpoint, stream_name, [4, 8, 4, 3], 0.8, 0.03)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_long_resize_rounds_under_load_keep_every_record_and_per_key_order(
    endpoint: str, stream_name: str
) -> None:
    await resize_under_group_load(endpoint, stream_name, [4, 8, 16, 8, 4, 3, 6, 3], 3.0, 0.01)
