"""ShardLog.quarantine (damaged ranges moved aside, reads skip them) and ShardLog.truncate_to
(the cut after a failed fsync), against real files in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_storage import FAST, fill, make_batch

from streamd.storage import LogConfig, ShardLog
from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError, InvalidArgumentError


def positions(path: Path) -> list[tuple[int, int]]:
    """(position, length) of each batch of a segment file whose headers are intact."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        length = batchfmt.parse_header(data, at).length
        out.append((at, length))
        at += length
    return out


def damage(path: Path, position: int, length: int, *, header: bool = False) -> bytes:
    """Flip a payload byte (or clobber the header) of the batch at ``position``; its bytes."""
    data = bytearray(path.read_bytes())
    if header:
        data[position : position + 8] = b"\xff" * 8
    else:
        data[position + batchfmt.HEADER_BYTES + 3] ^= 0x40
    path.write_bytes(bytes(data))
    return bytes(data[position : position + length])


def offsets_of(batches: list[bytes]) -> list[tuple[int, int]]:
    return [(h.base_offset, h.next_offset) for h in map(batchfmt.parse_header, batches)]


def five_batches_one_damaged(tmp_path: Path, *, header: bool = False) -> tuple[ShardLog, bytes]:
    log = ShardLog.open(tmp_path, FAST)
    fill(log, 5)  # offsets [0,1) [1,3) [3,6) [6,7) [7,9)
    log.close(clean=False)
    segment = tmp_path / f"{0:020d}.log"
    position, length = positions(segment)[2]
    damaged = damage(segment, position, length, header=header)
    return ShardLog.open(tmp_path, FAST), damaged


def test_a_quarantined_range_is_skipped_kept_and_remembered(tmp_path: Path) -> None:
    log, damaged = five_batches_one_damaged(tmp_path)
    assert log.recovery.corrupt_ranges == [(3, 6)]
    with pytest.raises(CorruptDataError):
        log.read(3, 1 << 20, log.next_offset)
    entry = log.quarantine(3, 6, now_ms=42)
    assert (entry.base_offset, entry.next_offset, entry.size_bytes) == (3, 6, len(damaged))
    assert (tmp_path / entry.file).read_bytes() == damaged
    assert log.quarantined_at(4) == (3, 6) and log.quarantined_at(6) is None
    assert offsets_of(log.read(0, 1 << 20, log.next_offset)) == [(0, 1), (1, 3)]  # stops at it
    assert offsets_of(log.read(6, 1 << 20, log.next_offset)) == [(6, 7), (7, 9)]
    assert log.quarantine(3, 6, now_ms=99) == entry  # repeating it changes nothing
    log.close()
    reopened = ShardLog.open(tmp_path, FAST)
    assert reopened.quarantined == [(3, 6)]
    assert json.loads((tmp_path / "quarantine.json").read_text())["ranges"][0]["base_offset"] == 3
    reopened.append(make_batch(reopened))  # the log goes on after it
    assert offsets_of(reopened.read(6, 1 << 20, reopened.next_offset))[-1] == (9, 10)
    reopened.close()


def test_an_unreadable_header_stretch_is_quarantined_to_the_next_good_batch(
    tmp_path: Path,
) -> None:
    log, damaged = five_batches_one_damaged(tmp_path, header=True)
    assert log.recovery.corrupt_ranges == [(3, 6)]  # recovery resynced at the batch after it
    entry = log.quarantine(3, 6, now_ms=1)
    assert (tmp_path / entry.file).read_bytes() == damaged
    assert offsets_of(log.read(6, 1 << 20, log.next_offset)) == [(6, 7), (7, 9)]
    log.close()


@pytest.mark.parametrize(
    ("base", "end", "why"),
    [
        (6, 7, "intact"),  # an intact batch is never moved aside
        (3, 7, "intact"),  # the damage plus an intact neighbour
        (4, 6, "whole damaged"),  # from the middle of the damaged batch
        (3, 5, "whole damaged"),  # ending in its middle
        (7, 12, "not in the log"),
    ],
)
def test_quarantine_refuses_anything_but_whole_damaged_stretches(
    tmp_path: Path, base: int, end: int, why: str
) -> None:
    log, _ = five_batches_one_damaged(tmp_path)
    with pytest.raises(InvalidArgumentError, match=why):
        log.quarantine(base, end, now_ms=1)
    assert log.quarantined == [] and not (tmp_path / "quarantine.json").exists()
    log.close()


def test_truncate_to_cuts_later_segments_and_the_tail_durably(tmp_path: Path) -> None:
    config = LogConfig(fsync=True, segment_bytes_max=300, index_interval_bytes=64)
    log = ShardLog.open(tmp_path, config)
    batches = fill(log, 12)
    assert len(log.segment_base_offsets) > 2
    keep = [b for b in batches if batchfmt.parse_header(b).next_offset <= 9]
    assert batchfmt.parse_header(keep[-1]).next_offset == 9
    log.truncate_to(9)
    assert log.closed
    reopened = ShardLog.open(tmp_path, config, verify_all=False)
    assert reopened.recovery.clean and reopened.next_offset == 9
    assert reopened.read(0, 1 << 20, 9) == keep
    reopened.append(make_batch(reopened))
    assert reopened.next_offset == 10
    reopened.close()
