"""ShardLog: appends and reads, rolls, retention, reopen, producers, full disk, threads.

Recovery from damaged files has its own file (test_storage_recovery.py) and the model-based
test its own (test_storage_model.py).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamd.storage import LogConfig, OffsetTrimmedError, ShardLog
from streamd.storage.index_file import SegmentSummary, decode_index, encode_index
from streamd.storage.segment import IndexEntry
from streamd_client import batch as batchfmt
from streamd_client.errors import StorageFullError

FAST = LogConfig(fsync=False, index_interval_bytes=256)


def make_batch(
    log: ShardLog,
    records: int = 1,
    *,
    at_ms: int = 1_000,
    producer: tuple[int, int] = (0, 0),
    data_bytes: int = 20,
) -> bytes:
    """A batch that continues ``log``; its data names its offsets so batches differ."""
    keys = [f"key-{log.next_offset + i}" for i in range(records)]
    datas = [f"{log.next_offset + i}:".encode().ljust(data_bytes, b"x") for i in range(records)]
    return batchfmt.encode_batch(
        keys,
        [bytes(16)] * records,
        datas,
        base_offset=log.next_offset,
        first_arrival_ms=at_ms,
        last_arrival_ms=at_ms,
        producer_id=producer[0],
        producer_seq=producer[1],
        codec=batchfmt.CODEC_NONE,
    )


def fill(log: ShardLog, count: int, *, at_ms: int = 1_000, step_ms: int = 0) -> list[bytes]:
    batches = []
    for i in range(count):
        batch = make_batch(log, records=1 + i % 3, at_ms=at_ms + i * step_ms)
        log.append(batch)
        batches.append(batch)
    return batches


def suffix_from(batches: list[bytes], offset: int) -> list[bytes]:
    """The expected read: every batch from the one containing ``offset``."""
    out = []
    for batch in batches:
        if batchfmt.parse_header(batch).next_offset > offset:
            out.append(batch)
    return out


def test_round_trip_reads_every_batch_byte_exact_from_every_offset(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path / "shard", FAST)
    batches = fill(log, 40)
    for offset in range(log.next_offset):
        assert log.read(offset, 1 << 30, log.next_offset) == suffix_from(batches, offset)
    log.close()


def test_read_from_mid_batch_offset_starts_with_the_containing_batch(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, FAST)
    first = make_batch(log, records=5)
    log.append(first)
    second = make_batch(log, records=5)
    log.append(second)
    assert log.read(3, 1 << 20, 10) == [first, second]
    assert log.read(7, 1 << 20, 10) == [second]
    log.close()


def test_read_stops_before_max_bytes_but_returns_at_least_one_batch(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, FAST)
    batches = fill(log, 10)
    size = len(batches[0])
    assert log.read(0, 1, log.next_offset) == batches[:1]
    taken = log.read(0, size + len(batches[1]) + len(batches[2]) - 1, log.next_offset)
    assert taken == batches[:2]
    log.close()


def test_read_includes_only_batches_below_end_offset(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, FAST)
    batches = fill(log, 6)
    end = batchfmt.parse_header(batches[3]).base_offset
    assert log.read(0, 1 << 20, end) == batches[:3]
    assert log.read(end, 1 << 20, end) == []
    assert log.read(end + 5, 1 << 20, end) == []
    log.close()


def test_read_below_start_offset_raises_offset_trimmed(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=600)
    log = ShardLog.open(tmp_path, config)
    fill(log, 20, at_ms=1_000)
    fill(log, 5, at_ms=9_000)
    assert log.delete_segments_before(5_000) > 0
    with pytest.raises(OffsetTrimmedError) as info:
        log.read(0, 1 << 20, log.next_offset)
    assert info.value.start_offset == log.start_offset > 0
    log.close()


def test_segments_roll_by_size_and_never_exceed_it(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=1_000, index_interval_bytes=100)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 60)
    assert len(log.segment_base_offsets) > 5
    for path in tmp_path.glob("*.log"):
        assert 0 < path.stat().st_size <= 1_000 or path.stem == f"{log.next_offset:020d}"
    assert log.read(0, 1 << 30, log.next_offset) == batches  # reads cross segments
    assert sorted(p.stem for p in tmp_path.glob("*.index")) == [
        f"{base:020d}" for base in log.segment_base_offsets[:-1]
    ]
    log.close()


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, LogConfig(fsync=False, segment_bytes_max=200))
    big = make_batch(log, data_bytes=500)
    log.append(big)
    log.append(make_batch(log))
    assert log.segment_base_offsets == [0, 1]
    assert log.read(0, 1, 2) == [big]
    log.close()


def test_segments_roll_by_age_of_their_first_batch(tmp_path: Path) -> None:
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, LogConfig(fsync=False, segment_age_ms_max=1_000))
        log.append(make_batch(log, at_ms=10_000))
        log.append(make_batch(log, at_ms=10_999))
        assert log.segment_base_offsets == [0]
        log.append(make_batch(log, at_ms=11_000))
        assert log.segment_base_offsets == [0, 2]
    rolls = [e for e in logs if e["event"] == "storage.segment.rolled"]
    assert [e["reason"] for e in rolls] == ["age"]
    log.close()


def test_offset_for_timestamp_finds_the_first_batch_at_or_after(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=700, index_interval_bytes=100)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 30, at_ms=1_000, step_ms=10)
    headers = [batchfmt.parse_header(b) for b in batches]
    for ts in range(900, 1_400, 7):
        expected = next((h.base_offset for h in headers if h.last_arrival_ms >= ts), None)
        assert log.offset_for_timestamp(ts) == (log.next_offset if expected is None else expected)
    log.close()


def test_retention_deletes_old_sealed_segments_oldest_first(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=700)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 40, at_ms=1_000, step_ms=10)
    before = log.segment_base_offsets
    with capture_logs() as logs:
        deleted = log.delete_segments_before(1_200)
    assert deleted >= 1
    assert log.segment_base_offsets == before[deleted:]
    assert log.start_offset == before[deleted]
    kept = [b for b in batches if batchfmt.parse_header(b).base_offset >= log.start_offset]
    gone = batches[: len(batches) - len(kept)]
    assert gone and all(batchfmt.parse_header(b).last_arrival_ms < 1_200 for b in gone)
    assert log.read(log.start_offset, 1 << 30, log.next_offset) == kept
    assert not (tmp_path / f"{before[0]:020d}.log").exists()
    assert not (tmp_path / f"{before[0]:020d}.index").exists()
    assert sum(e["event"] == "storage.retention.deleted" for e in logs) == deleted
    assert log.delete_segments_before(1_200) == 0
    log.close()


def test_retention_stops_at_the_first_newer_segment(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, LogConfig(fsync=False, segment_bytes_max=300))
    fill(log, 10, at_ms=5_000)  # first segments are new
    fill(log, 10, at_ms=1_000)  # later ones older (clock went back): kept, not skipped over
    assert log.delete_segments_before(2_000) == 0
    assert log.start_offset == 0
    log.close()


def test_retention_of_everything_keeps_next_offset_across_reopen(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, LogConfig(fsync=False, segment_bytes_max=500))
    fill(log, 12, at_ms=1_000)
    end = log.next_offset
    segments = len(log.segment_base_offsets)
    assert segments > 1
    assert log.delete_segments_before(2_000) == segments  # the active one rolled, then deleted
    assert log.start_offset == log.next_offset == end
    assert log.size_bytes == 0 and log.last_arrival_ms == 0
    assert log.read(end, 1 << 20, end) == []
    log.close()
    log = ShardLog.open(tmp_path, LogConfig(fsync=False))
    assert (log.start_offset, log.next_offset) == (end, end)
    assert [p.name for p in tmp_path.glob("*.log")] == [f"{end:020d}.log"]
    log.append(make_batch(log))
    assert log.next_offset == end + 1
    log.close()


def test_clean_reopen_loads_sealed_indexes_and_scans_only_headers(tmp_path: Path) -> None:
    config = LogConfig(fsync=True, segment_bytes_max=600, index_interval_bytes=100)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 30, at_ms=1_000, step_ms=1)
    log.sync()
    log.close()
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, config, verify_all=False)
    report = log.recovery
    assert report.clean and report.batches == 30 and report.truncated_bytes == 0
    assert report.segments == len(list(tmp_path.glob("*.log")))
    assert not any(e["event"] == "storage.recovery.index_rebuilt" for e in logs)
    done = next(e for e in logs if e["event"] == "storage.recovery.done")
    assert done["verified_payloads"] is False
    assert log.read(0, 1 << 30, log.next_offset) == batches
    assert log.last_arrival_ms == 1_029
    log.close()


def test_unclean_reopen_verifies_everything_and_keeps_every_batch(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=600)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 30)
    log.close(clean=False)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, config, verify_all=False)
    assert not log.recovery.clean
    assert next(e for e in logs if e["event"] == "storage.recovery.done")["verified_payloads"]
    assert log.read(0, 1 << 30, log.next_offset) == batches
    assert log.recovery.batches == 30
    log.close()


def test_index_rebuilt_when_missing_or_invalid(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=600, index_interval_bytes=100)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 30)
    log.close()
    indexes = sorted(tmp_path.glob("*.index"))
    assert len(indexes) >= 2
    good = indexes[0].read_bytes()
    indexes[0].unlink()
    indexes[1].write_bytes(b"SDIX" + b"\0" * 20)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, config, verify_all=False)
    rebuilt = [e["segment"] for e in logs if e["event"] == "storage.recovery.index_rebuilt"]
    assert rebuilt == [indexes[0].with_suffix(".log").name, indexes[1].with_suffix(".log").name]
    assert log.read(0, 1 << 30, log.next_offset) == batches
    assert indexes[0].read_bytes() == good  # rewritten identically
    log.close()


def test_stale_index_that_does_not_match_its_segment_is_ignored(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=600)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 20)
    log.close()
    first = sorted(tmp_path.glob("*.log"))[0]
    with first.open("ab") as file:  # the segment changed under its index
        file.write(b"\0" * 10)
    os.utime(first)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, config, verify_all=False)
    assert any(e["event"] == "storage.recovery.index_rebuilt" for e in logs)
    assert log.read(0, 1 << 30, log.next_offset) == batches
    log.close()


def test_producers_are_rebuilt_at_reopen_clean_and_unclean(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=500, producers_max=3)
    log = ShardLog.open(tmp_path, config)
    for seq in range(8):
        for pid in (11, 22, 33):
            log.append(make_batch(log, producer=(pid, seq)))
    log.append(make_batch(log, producer=(44, 0)))
    log.append(make_batch(log, producer=(22, 8)))
    log.append(make_batch(log))  # not idempotent: no entry
    expected = {pid: list(entries) for pid, entries in log.producers.items()}
    assert set(expected) == {22, 33, 44}  # 11 was least recently appended: evicted
    assert [seq for seq, _, _ in expected[22]] == [4, 5, 6, 7, 8]
    assert [seq for seq, _, _ in expected[33]] == [3, 4, 5, 6, 7]
    assert expected[44] == [(0, 24, 1)]
    log.close(clean=True)
    for clean in (True, False):
        log = ShardLog.open(tmp_path, config, verify_all=not clean)
        assert {pid: list(e) for pid, e in log.producers.items()} == expected
        log.close(clean=True)
    # The recency order survives too: 33 refreshed, so a newcomer evicts 44.
    log = ShardLog.open(tmp_path, config)
    log.append(make_batch(log, producer=(33, 8)))
    log.append(make_batch(log, producer=(55, 0)))
    assert set(log.producers) == {22, 33, 55}
    log.close()


def test_full_disk_leaves_the_log_unchanged_and_raises_storage_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ShardLog.open(tmp_path, FAST)
    batches = fill(log, 5)
    state = (log.next_offset, log.last_arrival_ms, log.size_bytes, dict(log.producers))
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes | memoryview, position: int) -> int:
        if len(data) > 8:
            real_pwrite(fd, bytes(data[: len(data) // 2]), position)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, position)

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(StorageFullError):
        log.append(make_batch(log, producer=(5, 0)))
    monkeypatch.undo()
    assert (log.next_offset, log.last_arrival_ms, log.size_bytes, dict(log.producers)) == state
    assert (tmp_path / f"{0:020d}.log").stat().st_size == log.size_bytes
    after = make_batch(log)
    log.append(after)
    assert log.read(0, 1 << 30, log.next_offset) == [*batches, after]
    log.close(clean=False)
    log = ShardLog.open(tmp_path, FAST)
    assert log.recovery.truncated_bytes == 0 and log.recovery.corrupt_ranges == []
    assert log.read(0, 1 << 30, log.next_offset) == [*batches, after]
    log.close()


def test_other_write_errors_are_reraised_with_the_log_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ShardLog.open(tmp_path, FAST)
    fill(log, 2)
    end = log.next_offset

    def broken(fd: int, data: bytes | memoryview, position: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", broken)
    with pytest.raises(OSError) as info:
        log.append(make_batch(log))
    assert info.value.errno == errno.EIO and not isinstance(info.value, StorageFullError)
    monkeypatch.undo()
    assert log.next_offset == end
    log.close()


def test_full_disk_while_rolling_keeps_the_active_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ShardLog.open(tmp_path, LogConfig(fsync=False, segment_bytes_max=300))
    batches = fill(log, 2)
    real_open = os.open

    def full(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".log") and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", full)
    big = make_batch(log, data_bytes=200)
    with pytest.raises(StorageFullError):
        log.append(big)
    monkeypatch.undo()
    assert log.segment_base_offsets == [0]
    log.append(big)
    assert log.read(0, 1 << 20, log.next_offset) == [*batches, big]
    log.close()


def test_append_asserts_contiguous_base_offsets(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, FAST)
    batch = make_batch(log)
    log.append(batch)
    with pytest.raises(AssertionError):
        log.append(batch)
    log.close()


def test_sync_and_clean_close_with_fsync_enabled(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, LogConfig(fsync=True, segment_bytes_max=400))
    batches = fill(log, 8)
    log.sync()
    log.close()
    log = ShardLog.open(tmp_path, LogConfig(fsync=True), verify_all=False)
    assert log.recovery.clean
    assert log.read(0, 1 << 30, log.next_offset) == batches
    log.close()


def test_segment_files_are_named_by_zero_padded_base_offset(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, LogConfig(fsync=False, segment_bytes_max=300))
    fill(log, 6)
    log.close()
    names = sorted(p.name for p in tmp_path.glob("*.log"))
    assert names[0] == "00000000000000000000.log"
    assert all(len(name) == 24 for name in names)


def test_index_file_golden_bytes() -> None:
    summary = SegmentSummary(
        base_offset=0,
        next_offset=3,
        size_bytes=200,
        batches=2,
        first_batch_ms=5,
        last_batch_ms=6,
        arrival_max_ms=6,
        entries=[IndexEntry(0, 0, -1)],
        corrupt_ranges=[],
        producers=[(9, [(0, 0, 1)])],
    )
    data = encode_index(summary)
    assert data[:4] == b"SDIX"
    assert data.hex() == GOLDEN_INDEX_HEX
    assert decode_index(data) == summary
    assert decode_index(data[:-1] + b"\0") is None


GOLDEN_INDEX_HEX = (
    "53444958"  # magic "SDIX"
    "7b7092ee"  # CRC32C of the CBOR body
    # CBOR map of 11: version 1, base_offset 0, next_offset 3, size_bytes 200, batches 2, ...
    "ab6776657273696f6e016b626173655f6f6666736574006b6e6578745f6f6666736574036a73697a"
    "655f627974657318c86762617463686573026e66697273745f62617463685f6d73056d6c6173745f"
    "62617463685f6d73066e6172726976616c5f6d61785f6d730667656e747269657381830000206e63"
    "6f72727570745f72616e676573806970726f6475636572738182098183000001"
)


def test_concurrent_reads_survive_appends_rolls_and_retention(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=800, index_interval_bytes=64)
    log = ShardLog.open(tmp_path, config)
    written: list[bytes] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            end = log.next_offset
            start = log.start_offset
            for offset in range(start, end, 7):
                try:
                    for raw in log.read(offset, 2_000, end):
                        header = batchfmt.parse_header(raw)
                        assert header.base_offset < end and raw in written
                    log.offset_for_timestamp(offset)
                except OffsetTrimmedError:
                    pass
                except BaseException as exc:
                    failures.append(exc)
                    return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(400):
        batch = make_batch(log, records=1 + i % 4, at_ms=i)
        written.append(batch)
        log.append(batch)
        if i % 50 == 49:
            log.delete_segments_before(i - 60)
    stop.set()
    for thread in threads:
        thread.join()
    log.close()
    assert failures == []
