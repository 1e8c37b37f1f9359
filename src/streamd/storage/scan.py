"""Recovery's core: walk one segment file and decide, batch by batch, what to keep.

This is the decision table (docs/storage-format.md has it too). ``expected`` is the offset the
next batch must start at; ``limit`` is the next segment's base offset (None for the last segment,
which is the only one ever appended to and the only one ever truncated).

  case              | the bytes at ``position``                        | action
  ------------------+--------------------------------------------------+------------------------
  K KEEP            | header CRC ok, base == expected, fits in the     | index it, go on
                    | file, next <= limit, and payload CRC ok (or only |
                    | headers are scanned)                             |
  P PAYLOAD_CORRUPT | as K but payload CRC bad, and right after it:    | corrupt range
                    | end of file, or a header that continues the log  | [base, next), go on
  R RESYNC          | anything else (bad header, short, length past    | corrupt range
                    | EOF, offset discontinuity, past limit, P with no | [expected, found.base),
                    | good successor), and further on a whole batch    | index entry at the
                    | with both CRCs ok, base >= expected, next <=     | found batch, go on
                    | limit                                            |
  T TORN_TAIL       | as R but nothing found; last segment             | truncate the file here
  S SEALED_TAIL     | as R but nothing found; sealed segment           | corrupt range
                    |                                                  | [expected, limit),
                    |                                                  | file left as is
  E SHORT_SEALED    | a sealed segment's batches end before ``limit``  | corrupt range
                    |                                                  | [next, limit)

Why resync before truncating even in the last segment: with fsync=never (or a disk that
reorders writes) a hole can appear in the middle of data that was written after it; cutting at
the hole would silently drop every later whole batch. Candidates must pass both CRCs, so random
bytes that happen to contain the magic are not taken for a batch.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError

from .files import pread_exact
from .segment import Segment

RESYNC_CHUNK_BYTES = 1024 * 1024
_MAGIC_BYTES = struct.pack(">H", batchfmt.MAGIC)


class Case(enum.Enum):
    KEEP = "keep"
    PAYLOAD_CORRUPT = "payload_corrupt"
    UNREADABLE = "unreadable"  # resolved by RESYNC, TORN_TAIL or SEALED_TAIL


@dataclass
class ScanResult:
    corrupt_ranges: list[tuple[int, int]] = field(default_factory=list)
    truncated_bytes: int = 0


@dataclass
class _Scan:
    segment: Segment
    file_bytes: int
    limit: int | None  # the next segment's base offset; None for the last segment
    verify_payloads: bool
    logger: Any
    fsync: bool
    result: ScanResult = field(default_factory=ScanResult)

    @property
    def fd(self) -> int:
        return self.segment.fd

    def corrupt(self, base: int, end: int, position: int, case: str) -> None:
        assert base < end
        self.result.corrupt_ranges.append((base, end))
        self.logger.error(
            "storage.recovery.corrupt_range",
            segment=self.segment.path.name,
            base_offset=base,
            next_offset=end,
            position=position,
            case=case,
        )


def scan_segment(
    segment: Segment,
    *,
    limit: int | None,
    verify_payloads: bool,
    fsync: bool,
    logger: Any,
) -> ScanResult:
    """Rebuild ``segment``'s state (a fresh Segment) from its file, applying the table above."""
    assert segment.batches == 0 and segment.size_bytes == 0
    file_bytes = os.fstat(segment.fd).st_size
    scan = _Scan(segment, file_bytes, limit, verify_payloads, logger, fsync)
    position, expected, force_entry = 0, segment.base_offset, False
    while position < file_bytes:
        case, header = _classify(scan, position, expected)
        if case is not Case.UNREADABLE:
            assert header is not None
            segment.add_batch(header, position, force_entry=force_entry)
            if case is Case.PAYLOAD_CORRUPT:  # P
                scan.corrupt(header.base_offset, header.next_offset, position, "payload_corrupt")
            position, expected, force_entry = position + header.length, header.next_offset, False
            continue
        found = _resync(scan, position, expected)
        if found is None:
            _tail_unreadable(scan, position, expected)  # T or S
            break
        position, expected = _skip_to(scan, position, expected, found), found[1].base_offset  # R
        force_entry = True
    _seal_end(scan)
    return scan.result


def _classify(
    scan: _Scan, position: int, expected: int
) -> tuple[Case, batchfmt.BatchHeader | None]:
    header = _header_at(scan.fd, position)
    if header is None or not _continues(scan, position, header, expected):
        return Case.UNREADABLE, header
    if not scan.verify_payloads or _payload_ok(scan.fd, position, header):
        return Case.KEEP, header
    after = position + header.length
    if after == scan.file_bytes:
        return Case.PAYLOAD_CORRUPT, header
    successor = _header_at(scan.fd, after)
    if successor is not None and _continues(scan, after, successor, header.next_offset):
        return Case.PAYLOAD_CORRUPT, header
    return Case.UNREADABLE, header


def _continues(scan: _Scan, position: int, header: batchfmt.BatchHeader, expected: int) -> bool:
    """Whether ``header`` at ``position`` is the log's next batch and lies whole in the file."""
    return (
        header.base_offset == expected
        and position + header.length <= scan.file_bytes
        and (scan.limit is None or header.next_offset <= scan.limit)
    )


def _header_at(fd: int, position: int) -> batchfmt.BatchHeader | None:
    try:
        return batchfmt.parse_header(pread_exact(fd, batchfmt.HEADER_BYTES, position))
    except CorruptDataError:
        return None


def _payload_ok(fd: int, position: int, header: batchfmt.BatchHeader) -> bool:
    try:
        batchfmt.verify_payload(pread_exact(fd, header.length, position), header)
    except CorruptDataError:
        return False
    return True


def _resync(scan: _Scan, start: int, expected: int) -> tuple[int, batchfmt.BatchHeader] | None:
    """The first whole, valid batch at or after ``start`` that may follow ``expected``."""
    chunk_at = start
    while chunk_at < scan.file_bytes:
        chunk = pread_exact(scan.fd, RESYNC_CHUNK_BYTES + 1, chunk_at)
        i = chunk.find(_MAGIC_BYTES)
        while 0 <= i < RESYNC_CHUNK_BYTES:
            position = chunk_at + i
            header = _header_at(scan.fd, position)
            if (
                header is not None
                and header.base_offset >= expected
                and _continues(scan, position, header, header.base_offset)
                and _payload_ok(scan.fd, position, header)
            ):
                return position, header
            i = chunk.find(_MAGIC_BYTES, i + 1)
        chunk_at += RESYNC_CHUNK_BYTES
    return None


def _skip_to(
    scan: _Scan, position: int, expected: int, found: tuple[int, batchfmt.BatchHeader]
) -> int:
    """R: record the offsets lost between ``expected`` and the found batch; return its position."""
    found_at, header = found
    scan.logger.warning(
        "storage.recovery.resynced",
        segment=scan.segment.path.name,
        position=position,
        resumed_at=found_at,
        skipped_bytes=found_at - position,
        expected_offset=expected,
        resumed_offset=header.base_offset,
    )
    if header.base_offset > expected:
        scan.corrupt(expected, header.base_offset, position, "resync")
    return found_at


def _tail_unreadable(scan: _Scan, position: int, expected: int) -> None:
    if scan.limit is None:  # T: the last segment's torn tail
        cut_bytes = scan.file_bytes - position
        os.ftruncate(scan.fd, position)
        if scan.fsync:
            os.fsync(scan.fd)
        scan.result.truncated_bytes += cut_bytes
        scan.file_bytes = position
        scan.logger.warning(
            "storage.recovery.truncated",
            segment=scan.segment.path.name,
            position=position,
            bytes=cut_bytes,
            next_offset=expected,
        )
    else:  # S: a sealed segment keeps its bytes; _seal_end records [expected, limit) if any
        scan.logger.warning(
            "storage.recovery.unreadable_tail",
            segment=scan.segment.path.name,
            position=position,
            bytes=scan.file_bytes - position,
            next_offset=expected,
        )


def _seal_end(scan: _Scan) -> None:
    """S/E: a sealed segment accounts for every offset up to the next segment's base."""
    segment = scan.segment
    if scan.limit is None:
        assert segment.size_bytes <= scan.file_bytes
        return
    if segment.next_offset < scan.limit:
        scan.corrupt(segment.next_offset, scan.limit, segment.size_bytes, "sealed_tail")
        segment.next_offset = scan.limit
    segment.size_bytes = scan.file_bytes
