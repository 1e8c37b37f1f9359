"""The segment fd cache: many logs with many segments work through a few descriptors, reads
and appends from several threads stay byte-exact while files are closed and reopened under
them, and a write awaiting its fsync keeps its descriptor."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from test_storage import fill, make_batch, suffix_from

from streamd.storage import FdCache, LogConfig, ShardLog

SMALL = LogConfig(fsync=False, segment_bytes_max=400, index_interval_bytes=128)


def open_segment_files(directory: Path) -> int:
    """How many of this process's descriptors are open on segment files under ``directory``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(directory)) and target.endswith(".log")
    return count


def test_many_logs_with_many_segments_work_through_a_few_descriptors(tmp_path: Path) -> None:
    fds = FdCache(4)
    logs = [ShardLog.open(tmp_path / f"shard-{i}", SMALL, fds=fds) for i in range(12)]
    written = [fill(log, 30) for log in logs]
    assert all(len(log.segment_base_offsets) >= 5 for log in logs)  # 60+ segment files
    assert open_segment_files(tmp_path) <= 4 and len(fds) <= 4
    rng = random.Random(5)
    for _ in range(200):
        i = rng.randrange(len(logs))
        offset = rng.randrange(logs[i].next_offset)
        assert logs[i].read(offset, 1 << 20, logs[i].next_offset) == suffix_from(written[i], offset)
        assert open_segment_files(tmp_path) <= 4
    assert fds.opened > 60 and fds.opened - fds.closed == len(fds)
    for log in logs:
        log.close()
    assert open_segment_files(tmp_path) == 0 and len(fds) == 0
    reopened = ShardLog.open(tmp_path / "shard-3", SMALL, fds=fds)  # clean markers still match
    assert reopened.recovery.clean
    assert reopened.read(0, 1 << 30, reopened.next_offset) == written[3]
    reopened.close()


def test_threads_reading_while_appending_and_retention_stay_byte_exact(tmp_path: Path) -> None:
    fds = FdCache(2)
    logs = [ShardLog.open(tmp_path / f"shard-{i}", SMALL, fds=fds) for i in range(3)]
    written = [fill(log, 20, at_ms=1_000) for log in logs]
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                i = rng.randrange(len(logs))
                log, end = logs[i], logs[i].next_offset
                start = log.start_offset
                got = log.read(rng.randrange(start, end), 1 << 20, end)
                assert got and all(batch in written[i] for batch in got)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(30):
            for i, log in enumerate(logs):
                batch = make_batch(log, at_ms=2_000 + round_)
                log.append(batch)
                written[i].append(batch)
            if round_ == 15:
                assert all(log.delete_segments_before(1_500) > 0 for log in logs)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    for i, log in enumerate(logs):
        assert log.read(log.start_offset, 1 << 30, log.next_offset) == suffix_from(
            written[i], log.start_offset
        )
        log.close()
    assert open_segment_files(tmp_path) == 0


def test_an_unsynced_write_keeps_its_descriptor_until_the_fsync(tmp_path: Path) -> None:
    fds = FdCache(1)
    synced = LogConfig(fsync=True, segment_bytes_max=400)
    a = ShardLog.open(tmp_path / "a", synced, fds=fds)
    b = ShardLog.open(tmp_path / "b", synced, fds=fds)
    a.append(make_batch(a))  # not synced yet
    b.append(make_batch(b))  # over the bound: only an idle descriptor may be closed
    assert open_segment_files(tmp_path / "a") == 1 and open_segment_files(tmp_path / "b") == 1
    a.sync()
    b.sync()
    b.append(make_batch(b))
    assert open_segment_files(tmp_path / "a") == 0  # a was idle and clean: closed
    b.sync()
    a.close()
    b.close()
    assert open_segment_files(tmp_path) == 0
