"""The ``.index`` file of a sealed segment: its sparse index and summary, so that a clean restart
need not scan the segment at all.

Layout: ``b"SDIX"`` | CRC32C of the body (4 bytes, big-endian) | body, one CBOR map (see
docs/storage-format.md). The body records the segment file's size; an index whose CRC fails, whose
fields are malformed, or whose size differs from the segment file is ignored and rebuilt by
scanning headers. Written at roll (and after recovery rescans a sealed segment) via a temporary
name and a rename, without fsync: a lost or torn index is only rebuilt, never trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import crc32c

from .files import write_file_atomically
from .producers import ProducerBatch
from .segment import IndexEntry, Segment

INDEX_MAGIC = b"SDIX"
INDEX_VERSION = 1
INDEX_FILE_BYTES_MAX = 64 * 1024 * 1024
_CRC = struct.Struct(">I")
_PREFIX_BYTES = len(INDEX_MAGIC) + _CRC.size


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    base_offset: int
    next_offset: int
    size_bytes: int
    batches: int
    first_batch_ms: int
    last_batch_ms: int
    arrival_max_ms: int
    entries: list[IndexEntry]
    corrupt_ranges: list[tuple[int, int]]
    producers: list[tuple[int, list[ProducerBatch]]]


def summarize(segment: Segment, corrupt_ranges: list[tuple[int, int]]) -> SegmentSummary:
    return SegmentSummary(
        segment.base_offset,
        segment.next_offset,
        segment.size_bytes,
        segment.batches,
        segment.first_batch_ms,
        segment.last_batch_ms,
        segment.arrival_max_ms,
        list(segment.entries),
        list(corrupt_ranges),
        segment.producers.ordered(),
    )


def encode_index(summary: SegmentSummary) -> bytes:
    body = cbor2.dumps(
        {
            "version": INDEX_VERSION,
            "base_offset": summary.base_offset,
            "next_offset": summary.next_offset,
            "size_bytes": summary.size_bytes,
            "batches": summary.batches,
            "first_batch_ms": summary.first_batch_ms,
            "last_batch_ms": summary.last_batch_ms,
            "arrival_max_ms": summary.arrival_max_ms,
            "entries": [list(entry) for entry in summary.entries],
            "corrupt_ranges": [list(r) for r in summary.corrupt_ranges],
            "producers": [[pid, [list(b) for b in batches]] for pid, batches in summary.producers],
        }
    )
    return INDEX_MAGIC + _CRC.pack(crc32c.crc32c(body)) + body


def decode_index(data: bytes) -> SegmentSummary | None:
    """The summary in ``data``, or None if it is not a valid index file of this version."""
    if len(data) < _PREFIX_BYTES or data[: len(INDEX_MAGIC)] != INDEX_MAGIC:
        return None
    (crc,) = _CRC.unpack_from(data, len(INDEX_MAGIC))
    body = memoryview(data)[_PREFIX_BYTES:]
    if crc32c.crc32c(body) != crc:
        return None
    try:
        fields = cbor2.loads(body)
        return _summary_of(fields)
    except Exception:  # cbor2 and malformed shapes raise several types; all mean "rebuild"
        return None


def _summary_of(fields: Any) -> SegmentSummary | None:
    if not isinstance(fields, dict) or fields.get("version") != INDEX_VERSION:
        return None
    ints: list[Any] = [
        fields[name]
        for name in (
            "base_offset",
            "next_offset",
            "size_bytes",
            "batches",
            "first_batch_ms",
            "last_batch_ms",
            "arrival_max_ms",
        )
    ]
    if not all(type(value) is int for value in ints):
        return None
    entries = [IndexEntry(*(_int(v) for v in entry)) for entry in fields["entries"]]
    ranges = [(_int(base), _int(end)) for base, end in fields["corrupt_ranges"]]
    producers = [
        (_int(pid), [(_int(s), _int(b), _int(c)) for s, b, c in batches])
        for pid, batches in fields["producers"]
    ]
    base, end, size, batches, first_ms, last_ms, max_ms = ints
    return SegmentSummary(
        base, end, size, batches, first_ms, last_ms, max_ms, entries, ranges, producers
    )


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError("index field is not an integer")
    return value


def write_index(path: Path, summary: SegmentSummary) -> None:
    write_file_atomically(path, encode_index(summary), fsync=False)


def read_index(path: Path) -> SegmentSummary | None:
    try:
        with path.open("rb") as file:
            data = file.read(INDEX_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    if len(data) > INDEX_FILE_BYTES_MAX:
        return None
    return decode_index(data)


def restore(segment: Segment, summary: SegmentSummary) -> None:
    """Give a freshly opened sealed segment the state its (checked) index file describes."""
    assert segment.batches == 0 and summary.base_offset == segment.base_offset
    segment.entries = list(summary.entries)
    segment.size_bytes = summary.size_bytes
    segment.next_offset = summary.next_offset
    segment.batches = summary.batches
    segment.first_batch_ms = summary.first_batch_ms
    segment.last_batch_ms = summary.last_batch_ms
    segment.arrival_max_ms = summary.arrival_max_ms
    segment.producers.extend(summary.producers)
