"""The shard commit pipeline against an in-memory log double: group commit, idempotence,
backpressure, long-poll wake-ups, tail-cache reads. (The real log has its own suite; the
integration tests run both together.)"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from streamd.catalog import ShardMeta
from streamd.replication import LocalCommitter, Proposal
from streamd.shard import PipelineConfig, ShardPipeline
from streamd.storage import LogConfig, ShardLog, SyncFailedError
from streamd_client import batch as batchfmt
from streamd_client.errors import (
    InternalError,
    InvalidSequenceNumberError,
    NotLeaderError,
    OutOfOrderSequenceError,
    StorageFullError,
    ThrottledError,
)
from streamd_client.model import HASH_KEY_MAX, Position, hash_bytes_of, make_sequence


class MemoryLog:
    """Just enough of ShardLog for the pipeline: append, sync, read, producers."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.start_offset = 0
        self.next_offset = 0
        self.last_arrival_ms = 0
        self.syncs = 0
        self.producers: dict[int, deque[tuple[int, int, int]]] = {}

    def append(self, data: bytes) -> None:
        header = batchfmt.parse_header(data)
        assert header.base_offset == self.next_offset
        self.batches.append(data)
        self.next_offset = header.next_offset
        self.last_arrival_ms = header.last_arrival_ms
        if header.producer_id:
            entries = self.producers.setdefault(header.producer_id, deque(maxlen=5))
            entries.append((header.producer_seq, header.base_offset, header.record_count))

    def sync(self) -> None:
        self.syncs += 1

    def read(self, offset: int, max_bytes: int, end_offset: int) -> list[bytes]:
        out = []
        for data in self.batches:
            header = batchfmt.parse_header(data)
            if header.next_offset > offset and header.base_offset < end_offset:
                out.append(data)
        return out

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        for data in self.batches:
            header = batchfmt.parse_header(data)
            if header.last_arrival_ms >= timestamp_ms:
                return header.base_offset
        return self.next_offset

    def delete_segments_before(self, cutoff_ms: int) -> int:
        return 0

    def quarantined_at(self, offset: int) -> tuple[int, int] | None:
        return None  # nothing is ever damaged in memory


SHARD = ShardMeta("shardId-000000000000", 0, 0, HASH_KEY_MAX)


@pytest.fixture
async def pipeline(nursery: trio.Nursery) -> AsyncIterator[ShardPipeline]:
    p = ShardPipeline(
        "s", SHARD, MemoryLog(), PipelineConfig(queue_requests_max=50), LocalCommitter()
    )  # type: ignore[arg-type]
    nursery.start_soon(p.run)
    yield p
    await p.close()


def records(n: int, prefix: str = "k") -> tuple[list[str], list[bytes], list[bytes]]:
    keys = [f"{prefix}{i}" for i in range(n)]
    return keys, [hash_bytes_of(k) for k in keys], [k.encode() for k in keys]


def client_batch(n: int, producer_id: int = 0, seq: int = 0) -> bytes:
    return batchfmt.encode_batch(*records(n), producer_id=producer_id, producer_seq=seq)


async def test_concurrent_writers_share_group_commits(pipeline: ShardPipeline) -> None:
    writes = [pipeline.enqueue_records(*records(2, f"w{i}-")) for i in range(20)]
    results = [await w.wait() for w in writes]
    offsets = [base for base, _, _ in results]
    assert offsets == list(range(0, 40, 2))
    assert pipeline.high_watermark == 40
    log: MemoryLog = pipeline.log  # type: ignore[assignment]
    assert len(log.batches) < 20  # writes queued during a commit went out together
    assert log.syncs <= len(log.batches)


async def test_retried_producer_batch_is_acknowledged_not_stored_twice(
    pipeline: ShardPipeline,
) -> None:
    data = client_batch(3, producer_id=7, seq=0)
    first = await pipeline.enqueue_batch(data, batchfmt.parse_header(data)).wait()
    again = await pipeline.enqueue_batch(data, batchfmt.parse_header(data)).wait()
    assert first == (0, 3, False)
    assert again == (0, 3, True)
    assert pipeline.high_watermark == 3


async def test_producer_sequence_gap_is_refused(pipeline: ShardPipeline) -> None:
    data = client_batch(1, producer_id=9, seq=0)
    await pipeline.enqueue_batch(data, batchfmt.parse_header(data)).wait()
    skipped = client_batch(1, producer_id=9, seq=2)
    with pytest.raises(OutOfOrderSequenceError):
        pipeline.enqueue_batch(skipped, batchfmt.parse_header(skipped))


async def test_full_queue_throttles(pipeline: ShardPipeline) -> None:
    with pytest.raises(ThrottledError):
        for _ in range(200):
            pipeline.enqueue_records(*records(1))
    await trio.sleep(0.1)


async def test_long_poll_wakes_on_commit(pipeline: ShardPipeline, nursery: trio.Nursery) -> None:
    got: list[int] = []
    done = trio.Event()

    async def reader() -> None:
        result = await pipeline.read(Position.latest(), 1 << 20, wait_ms=5000)
        got.append(result.next_offset)
        done.set()

    nursery.start_soon(reader)
    await trio.sleep(0.05)
    await pipeline.enqueue_records(*records(4)).wait()
    with trio.fail_after(2):
        await done.wait()
    assert got == [4]


async def test_read_positions(pipeline: ShardPipeline) -> None:
    for _ in range(3):
        await pipeline.enqueue_records(*records(2)).wait()
    at = await pipeline.read(Position.at_sequence(make_sequence(0, 3)), 1 << 20, 0)
    assert at.start_offset == 3 and at.next_offset == 6 and at.high_watermark == 6
    after = await pipeline.read(Position.after_sequence(make_sequence(0, 3)), 1 << 20, 0)
    assert after.start_offset == 4
    with pytest.raises(InvalidSequenceNumberError):
        pipeline.resolve(Position.at_sequence(make_sequence(0, 7)))
    with pytest.raises(InvalidSequenceNumberError):
        pipeline.resolve(Position.at_sequence(make_sequence(1, 0)))
    tip = await pipeline.read(Position.latest(), 1 << 20, 0)
    assert tip.batches == [] and tip.millis_behind == 0


async def test_fsync_failure_fences_the_shard(nursery: trio.Nursery) -> None:
    class FailingSyncLog(MemoryLog):
        def sync(self) -> None:
            raise SyncFailedError("seg.log", OSError(errno.EIO, "Input/output error"))

    p = ShardPipeline("s", SHARD, FailingSyncLog(), PipelineConfig(), LocalCommitter())  # type: ignore[arg-type]
    nursery.start_soon(p.run)
    first = p.enqueue_records(*records(3))
    queued = p.enqueue_records(*records(2, "q"))
    for write in (first, queued):
        with pytest.raises(InternalError, match="fsync"):
            await write.wait()
    with pytest.raises(InternalError, match="refuses writes"):
        p.enqueue_records(*records(1))
    assert p.high_watermark == 0  # nothing unsynced became readable
    with pytest.raises(InternalError, match="refuses writes"):  # no reshard of a fenced shard
        await p.seal(1.0)
    p.unseal()
    await p.close()


async def test_fsync_out_of_space_discards_the_unacknowledged_and_recovers_without_restart(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from fsync (delayed allocation) is not EIO: what it may have lost lies past the
    high watermark, never acknowledged nor served, so the shard cuts it and goes on by itself
    once space is back: no fence, no restart; the log on disk holds exactly what was acked."""
    p = ShardPipeline(
        "s", SHARD, ShardLog.open(tmp_path, LogConfig()), PipelineConfig(), LocalCommitter()
    )
    nursery.start_soon(p.run)
    assert await p.enqueue_records(*records(3)).wait() == (0, 3, False)
    full = True
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def no_space(real: object) -> object:
        def sync(fd: int) -> None:
            if full:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)  # type: ignore[operator]

        return sync

    monkeypatch.setattr(os, "fdatasync", no_space(real_fdatasync))
    monkeypatch.setattr(os, "fsync", no_space(real_fsync))
    lost = p.enqueue_records(*records(2, "lost"))
    with pytest.raises(StorageFullError, match="fsync"):
        await lost.wait()
    with pytest.raises(StorageFullError, match="cannot recover"):  # still full: typed, again
        await p.enqueue_records(*records(1, "still")).wait()
    assert p.high_watermark == 3  # nothing unsynced became readable
    full = False
    base, count, _ = await p.enqueue_records(*records(2, "after")).wait()
    assert (base, count) == (3, 2)  # the cut offsets are reused: nobody ever saw them
    read = await p.read(Position.trim_horizon(), 1 << 20, 0)
    keys = [
        k for b in read.batches for k in batchfmt.decode_records(b, batchfmt.parse_header(b))[0]
    ]
    assert keys == ["k0", "k1", "k2", "after0", "after1"]
    await p.close()
    await p.close_log()
    reopened = ShardLog.open(tmp_path, LogConfig())
    assert reopened.next_offset == 5 and reopened.recovery.corrupt_ranges == []
    reopened.close()


class FlakyCommitter(LocalCommitter):
    """Refuses the next ``failures`` proposals once the local vote is in (a replication step
    that found no quorum)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def replicate(self, proposal: Proposal) -> None:
        await super().replicate(proposal)
        if self.failures:
            self.failures -= 1
            raise NotLeaderError("deposed while committing")


async def test_appended_but_uncommitted_batches_are_never_published(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """ "Appended locally" is not "committed": a group whose commit step failed is cut before
    the next group, so it is never served and its offsets go to the next writes."""
    committer = FlakyCommitter(0)
    p = ShardPipeline("s", SHARD, ShardLog.open(tmp_path, LogConfig()), PipelineConfig(), committer)
    nursery.start_soon(p.run)
    assert await p.enqueue_records(*records(3)).wait() == (0, 3, False)
    committer.failures = 1
    with pytest.raises(NotLeaderError):
        await p.enqueue_records(*records(2, "lost")).wait()
    assert p.high_watermark == 3
    base, count, _ = await p.enqueue_records(*records(2, "after")).wait()
    assert (base, count) == (3, 2)
    read = await p.read(Position.trim_horizon(), 1 << 20, 0)
    keys = [
        k for b in read.batches for k in batchfmt.decode_records(b, batchfmt.parse_header(b))[0]
    ]
    assert keys == ["k0", "k1", "k2", "after0", "after1"]
    data = client_batch(1, producer_id=9, seq=0)
    committer.failures = 1
    with pytest.raises(NotLeaderError):
        await p.enqueue_batch(data, batchfmt.parse_header(data)).wait()
    again = await p.enqueue_batch(data, batchfmt.parse_header(data)).wait()
    assert again == (5, 1, False)  # stored anew: the cut batch is not remembered as committed
    await p.close()
    await p.close_log()
    reopened = ShardLog.open(tmp_path, LogConfig())
    assert reopened.next_offset == 6
    reopened.close()
