"""Recovery: every row of the decision table in streamd/storage/scan.py, on damaged files.

Each test writes a log, damages its files the way a crash, a full disk or bit rot would, reopens
it, and checks three things: what the recovery report says, what was logged, and that every
whole batch is still served byte for byte while the damaged range is reported, never served.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamd.storage import LogConfig, ShardLog
from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError

FAST = LogConfig(fsync=False, index_interval_bytes=256)


def make_batch(base_offset: int, records: int = 2, *, at_ms: int = 1_000) -> bytes:
    keys = [f"key-{base_offset + i}" for i in range(records)]
    datas = [f"{base_offset + i}:".encode().ljust(40, b"d") for i in range(records)]
    return batchfmt.encode_batch(
        keys,
        [bytes(16)] * records,
        datas,
        base_offset=base_offset,
        first_arrival_ms=at_ms,
        last_arrival_ms=at_ms,
        codec=batchfmt.CODEC_NONE,
    )


def write_log(directory: Path, count: int, config: LogConfig = FAST) -> list[bytes]:
    log = ShardLog.open(directory, config)
    batches = []
    for i in range(count):
        batch = make_batch(log.next_offset, records=1 + i % 3)
        log.append(batch)
        batches.append(batch)
    log.close(clean=True)
    return batches


def span(batch: bytes) -> tuple[int, int]:
    header = batchfmt.parse_header(batch)
    return header.base_offset, header.next_offset


def position_of(batches: list[bytes], i: int) -> int:
    return sum(map(len, batches[:i]))


def flip(path: Path, position: int) -> None:
    with path.open("r+b") as file:
        file.seek(position)
        byte = file.read(1)
        file.seek(position)
        file.write(bytes([byte[0] ^ 0xFF]))


def segment(directory: Path, base: int = 0) -> Path:
    return directory / f"{base:020d}.log"


def read_all_around(log: ShardLog, ranges: list[tuple[int, int]]) -> list[bytes]:
    """What a reader skipping the reported ranges gets from the whole log."""
    out: list[bytes] = []
    offset = log.start_offset
    while offset < log.next_offset:
        try:
            got = log.read(offset, 1 << 30, log.next_offset)
        except CorruptDataError as exc:
            assert (exc.details["base_offset"], exc.details["next_offset"]) in ranges
            offset = exc.details["next_offset"]
            continue
        out += got
        offset = batchfmt.parse_header(got[-1]).next_offset
    return out


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == name]


# -- K: whole batches are kept ------------------------------------------------------------------


def test_whole_batches_are_kept_after_an_unclean_stop(tmp_path: Path) -> None:
    log = ShardLog.open(tmp_path, FAST)
    batch = make_batch(0)
    log.append(batch)
    log.close(clean=False)
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert not log.recovery.clean and log.recovery.batches == 1
    assert log.read(0, 1 << 20, log.next_offset) == [batch]
    log.close()


# -- T: a torn tail in the last segment is truncated --------------------------------------------


def test_garbage_appended_to_the_tail_is_truncated_and_logged(tmp_path: Path) -> None:
    batches = write_log(tmp_path, 10)
    garbage = b"not a batch at all " * 7
    with segment(tmp_path).open("ab") as file:
        file.write(garbage)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert not log.recovery.clean  # the marker no longer matches the file
    assert log.recovery.truncated_bytes == len(garbage)
    assert log.recovery.corrupt_ranges == []
    (cut,) = events(logs, "storage.recovery.truncated")
    assert cut["bytes"] == len(garbage) and cut["log_level"] == "warning"
    assert log.read(0, 1 << 30, log.next_offset) == batches
    assert segment(tmp_path).stat().st_size == sum(map(len, batches))
    log.close()


@pytest.mark.parametrize("kept_bytes", [0, 1, 30, batchfmt.HEADER_BYTES, -1])
def test_torn_last_batch_is_cut_back_to_the_last_whole_batch(
    tmp_path: Path, kept_bytes: int
) -> None:
    batches = write_log(tmp_path, 6)
    last = batches[-1]
    whole = position_of(batches, len(batches) - 1)
    torn = whole + (kept_bytes if kept_bytes >= 0 else len(last) - 1)
    os.truncate(segment(tmp_path), torn)
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert log.recovery.truncated_bytes == torn - whole
    assert log.next_offset == span(last)[0]
    assert log.read(0, 1 << 30, log.next_offset) == batches[:-1]
    log.append(last)  # the offset is free again
    log.close()
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert log.recovery.clean and log.read(0, 1 << 30, log.next_offset) == batches
    log.close()


def test_batch_with_good_header_and_payload_cut_short_is_truncated(tmp_path: Path) -> None:
    batches = write_log(tmp_path, 4)
    size = sum(map(len, batches))
    partial = make_batch(span(batches[-1])[1])[:-10]  # a header promising more than is there
    with segment(tmp_path).open("ab") as file:
        file.write(partial)
    log = ShardLog.open(tmp_path, FAST)
    assert log.recovery.truncated_bytes == len(partial)
    assert segment(tmp_path).stat().st_size == size
    assert log.read(0, 1 << 30, log.next_offset) == batches
    log.close()


# -- P: a bad payload between good batches is a corrupt range -----------------------------------


def test_flipped_payload_byte_in_a_middle_batch_is_reported_and_others_served(
    tmp_path: Path,
) -> None:
    batches = write_log(tmp_path, 10)
    flip(segment(tmp_path), position_of(batches, 4) + batchfmt.HEADER_BYTES + 5)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, FAST, verify_all=True)
    bad = span(batches[4])
    assert log.recovery.corrupt_ranges == [bad] == log.corrupt_ranges
    assert log.recovery.truncated_bytes == 0
    (entry,) = events(logs, "storage.recovery.corrupt_range")
    assert entry["case"] == "payload_corrupt" and entry["log_level"] == "error"
    assert log.read(0, 1 << 30, log.next_offset) == batches[:4]
    for offset in range(*bad):
        with pytest.raises(CorruptDataError) as info:
            log.read(offset, 1 << 30, log.next_offset)
        assert (info.value.details["base_offset"], info.value.details["next_offset"]) == bad
    assert log.read(bad[1], 1 << 30, log.next_offset) == batches[5:]
    assert read_all_around(log, [bad]) == batches[:4] + batches[5:]
    log.close()


def test_bad_payload_of_the_very_last_batch_followed_by_eof_is_a_corrupt_range(
    tmp_path: Path,
) -> None:
    batches = write_log(tmp_path, 5)
    flip(segment(tmp_path), sum(map(len, batches)) - 1)
    log = ShardLog.open(tmp_path, FAST)
    assert log.recovery.corrupt_ranges == [span(batches[-1])]
    assert log.next_offset == span(batches[-1])[1]  # the offsets stay burned, never reused
    assert read_all_around(log, log.corrupt_ranges) == batches[:-1]
    log.close()


def test_clean_header_scan_misses_payload_rot_but_reads_still_catch_it(tmp_path: Path) -> None:
    batches = write_log(tmp_path, 8)
    flip(segment(tmp_path), position_of(batches, 3) + batchfmt.HEADER_BYTES)
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert log.recovery.clean and log.recovery.corrupt_ranges == []
    assert log.read(0, 1 << 30, log.next_offset) == batches[:3]  # stops before the bad one
    with pytest.raises(CorruptDataError) as info:
        log.read(span(batches[3])[0], 1 << 30, log.next_offset)
    assert (info.value.details["base_offset"], info.value.details["next_offset"]) == span(
        batches[3]
    )
    log.close()
    log = ShardLog.open(tmp_path, FAST, verify_all=True)  # clean, and still verifies all
    assert log.recovery.clean and log.recovery.corrupt_ranges == [span(batches[3])]
    log.close()


# -- R: resync past a bad header ----------------------------------------------------------------


def test_flipped_header_byte_in_a_middle_batch_resyncs_at_the_next(tmp_path: Path) -> None:
    batches = write_log(tmp_path, 10)
    flip(segment(tmp_path), position_of(batches, 4) + 30)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert log.recovery.corrupt_ranges == [span(batches[4])]
    assert log.recovery.truncated_bytes == 0
    (resync,) = events(logs, "storage.recovery.resynced")
    assert resync["skipped_bytes"] == len(batches[4])
    assert read_all_around(log, log.corrupt_ranges) == batches[:4] + batches[5:]
    assert log.offset_for_timestamp(0) == 0
    log.close()


def test_a_hole_of_zeros_in_the_last_segment_keeps_the_batches_after_it(tmp_path: Path) -> None:
    batches = write_log(tmp_path, 10)
    with segment(tmp_path).open("r+b") as file:  # e.g. fsync=never and a power cut
        file.seek(position_of(batches, 2))
        file.write(bytes(len(batches[2]) + len(batches[3])))
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    lost = (span(batches[2])[0], span(batches[3])[1])
    assert log.recovery.corrupt_ranges == [lost]
    assert log.recovery.truncated_bytes == 0
    assert read_all_around(log, [lost]) == batches[:2] + batches[4:]
    log.close()


def test_an_offset_discontinuity_is_corruption(tmp_path: Path) -> None:
    first = [make_batch(0), make_batch(2)]
    jumped = [make_batch(10), make_batch(12)]
    tmp_path.mkdir(exist_ok=True)
    segment(tmp_path).write_bytes(b"".join(first + jumped))
    log = ShardLog.open(tmp_path, FAST)
    assert log.recovery.corrupt_ranges == [(4, 10)]
    assert log.next_offset == 14
    assert read_all_around(log, [(4, 10)]) == first + jumped
    log.close()


def test_garbage_inserted_between_batches_is_skipped_without_losing_offsets(
    tmp_path: Path,
) -> None:
    batches = [make_batch(0), make_batch(2), make_batch(4)]
    segment(tmp_path).write_bytes(batches[0] + b"\x53\x44junk" * 9 + batches[1] + batches[2])
    log = ShardLog.open(tmp_path, FAST)
    assert log.recovery.corrupt_ranges == [] and log.recovery.truncated_bytes == 0
    assert log.read(2, 1 << 20, log.next_offset) == batches[1:]
    assert read_all_around(log, []) == batches
    log.close()


# -- S and E: sealed segments are never truncated ----------------------------------------------


SEALED = LogConfig(fsync=False, segment_bytes_max=600, index_interval_bytes=128)


def sealed_log(directory: Path, config: LogConfig = SEALED) -> tuple[list[bytes], list[int]]:
    log = ShardLog.open(directory, config)
    batches = []
    for _ in range(20):
        batch = make_batch(log.next_offset)
        log.append(batch)
        batches.append(batch)
    bases = log.segment_base_offsets
    log.close()
    assert len(bases) >= 3
    return batches, bases


def test_garbage_over_a_sealed_segments_tail_is_a_corrupt_range_not_a_cut(
    tmp_path: Path,
) -> None:
    batches, bases = sealed_log(tmp_path)
    path = segment(tmp_path, bases[0])
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(size - 20)
        file.write(b"\xee" * 20)
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, FAST, verify_all=True)
    in_first = [b for b in batches if span(b)[1] <= bases[1]]
    lost = (span(in_first[-1])[0], bases[1])
    assert log.recovery.corrupt_ranges == [lost]
    assert log.recovery.truncated_bytes == 0 and not events(logs, "storage.recovery.truncated")
    assert path.stat().st_size == size
    assert read_all_around(log, [lost]) == [b for b in batches if b is not in_first[-1]]
    log.close()


def test_a_sealed_segment_cut_short_leaves_a_corrupt_range(tmp_path: Path) -> None:
    batches, bases = sealed_log(tmp_path)
    path = segment(tmp_path, bases[1])
    in_second = [b for b in batches if bases[1] <= span(b)[0] < bases[2]]
    os.truncate(path, path.stat().st_size - len(in_second[-1]))
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    lost = span(in_second[-1])
    assert log.recovery.corrupt_ranges == [lost]
    assert path.stat().st_size == sum(map(len, in_second[:-1]))
    assert read_all_around(log, [lost]) == [b for b in batches if b is not in_second[-1]]
    log.close()
    log = ShardLog.open(tmp_path, FAST, verify_all=False)  # the range is in the .index now
    assert log.recovery.clean and log.recovery.corrupt_ranges == [lost]
    log.close()


def test_header_rot_in_a_trusted_sealed_segment_is_reported_by_read(tmp_path: Path) -> None:
    config = LogConfig(fsync=False, segment_bytes_max=600, index_interval_bytes=4096)
    batches, bases = sealed_log(tmp_path, config)
    in_first = [b for b in batches if span(b)[1] <= bases[1]]
    flip(segment(tmp_path, bases[0]), position_of(in_first, 1) + 10)
    log = ShardLog.open(tmp_path, config, verify_all=False)  # clean: the .index is trusted
    assert log.recovery.clean and log.recovery.corrupt_ranges == []
    assert log.read(0, 1 << 30, log.next_offset) == in_first[:1]
    with pytest.raises(CorruptDataError) as info:
        log.read(span(in_first[2])[0], 1 << 30, log.next_offset)
    # The reader learns the stretch up to the next place known to hold a good header.
    details = info.value.details
    assert (details["base_offset"], details["next_offset"]) == (span(in_first[1])[0], bases[1])
    assert log.read(bases[1], 1 << 30, log.next_offset)[0] == batches[len(in_first)]
    log.close()


# -- the directory itself -----------------------------------------------------------------------


def test_leftover_tmp_and_orphan_index_files_are_removed(tmp_path: Path) -> None:
    batches = write_log(tmp_path, 3)
    (tmp_path / "00000000000000000000.index.tmp").write_bytes(b"half")
    (tmp_path / "00000000000000000099.index").write_bytes(b"orphan")
    (tmp_path / "README").write_text("left alone")
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert len(events(logs, "storage.recovery.stray_file_removed")) == 2
    assert len(events(logs, "storage.recovery.unknown_file")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000000000000000000.log", "README"]
    assert log.read(0, 1 << 20, log.next_offset) == batches
    log.close()


def test_a_marker_that_does_not_match_the_files_reads_as_unclean(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    (tmp_path / "clean-shutdown").write_text('{"active_base_offset": 0, "active_size_bytes": 1}')
    with capture_logs() as logs:
        log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert not log.recovery.clean
    assert events(logs, "storage.recovery.marker_mismatch")
    log.close()


def test_the_marker_is_gone_while_the_log_is_open(tmp_path: Path) -> None:
    write_log(tmp_path, 2)
    log = ShardLog.open(tmp_path, FAST, verify_all=False)
    assert log.recovery.clean and not (tmp_path / "clean-shutdown").exists()
    log.close(clean=False)
    assert not (tmp_path / "clean-shutdown").exists()


def test_a_read_across_segments_stops_before_rot_in_the_next_segment(tmp_path: Path) -> None:
    batches, bases = sealed_log(tmp_path)
    in_first = [b for b in batches if span(b)[1] <= bases[1]]
    flip(segment(tmp_path, bases[1]), batchfmt.HEADER_BYTES + 3)  # first payload of segment 2
    log = ShardLog.open(tmp_path, SEALED, verify_all=False)  # clean: nothing found at open
    assert log.read(0, 1 << 30, log.next_offset) == in_first
    with pytest.raises(CorruptDataError):
        log.read(bases[1], 1 << 30, log.next_offset)
    log.close()
