"""The data model both sides share: limits, hash keys, shard ids, sequence numbers, positions.

Pure functions and small value types; no I/O. The server imports these so that a sequence number
or a hash-key route means the same thing on both ends of the wire.

Sequence numbers are 56-digit decimal strings like Kinesis's. The integer behind one is
``2**183 | shard_index << 64 | offset``: the leading bit fixes the width at 56 digits (so string
order equals numeric order), the shard index makes it unique within a stream, and the offset makes
it strictly increasing within a shard. Converting either way is O(1).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from .errors import (
    InvalidArgumentError,
    InvalidHashKeyError,
    InvalidPartitionKeyError,
    InvalidSequenceNumberError,
    InvalidStreamNameError,
    RecordTooLargeError,
)
from .summary import summary

# Limits (units last in the names). Kinesis's where Kinesis has one.
RECORD_DATA_BYTES_MAX = 1024 * 1024  # a stream's default (Kinesis's)
RECORD_DATA_BYTES_CEILING = 10 * 1024 * 1024  # what UpdateMaxRecordSize may raise it to
PARTITION_KEY_CHARS_MAX = 256
PUT_RECORDS_COUNT_MAX = 500
PUT_RECORDS_BYTES_MAX = 5 * 1024 * 1024  # a stream at the default record size
PUT_RECORDS_LARGE_BYTES_MAX = 10 * 1024 * 1024  # a stream whose records may exceed 1 MiB
SHARD_COUNT_MAX = 1024
RETENTION_HOURS_MIN = 24
RETENTION_HOURS_MAX = 8760
RETENTION_HOURS_DEFAULT = 24
READ_BYTES_MAX = 10 * 1024 * 1024
READ_WAIT_MS_MAX = 30_000
TIMESTAMP_MS_MAX = 2**64 - 1
SUB_SEQUENCE_MAX = 2**31 - 1  # a user record's index in a KPL aggregate (kpl.py), checkpointed

HASH_KEY_MAX = 2**128 - 1
STREAM_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]{1,128}")

_SEQ_MARK = 1 << 183
_OFFSET_BITS = 64
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_SHARD_INDEX_MAX = (1 << (183 - _OFFSET_BITS)) - 1
_SHARD_ID_RE = re.compile(r"shardId-([0-9]{12})")  # ASCII digits only, not \\d


def check_stream_name(name: object) -> str:
    """Return ``name`` if it is a valid stream name, else raise InvalidStreamNameError."""
    if not isinstance(name, str) or not STREAM_NAME_RE.fullmatch(name):
        raise InvalidStreamNameError(
            f"stream name must match [a-zA-Z0-9_.-]{{1,128}}, got {summary(name, 140)}"
        )
    return name


def check_partition_key(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= PARTITION_KEY_CHARS_MAX:
        raise InvalidPartitionKeyError(
            f"partition key must be 1..{PARTITION_KEY_CHARS_MAX} Unicode characters, "
            f"got {summary(key, 80)}"
        )
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, so no MD5 to route by
            raise InvalidPartitionKeyError(
                f"partition key must be valid Unicode (no lone surrogates), got {summary(key, 80)}"
            ) from None
    return key


def check_record_data(data: object, limit_bytes: int = RECORD_DATA_BYTES_MAX) -> bytes:
    """``data`` as bytes if it is at most ``limit_bytes`` long (a stream's max record size:
    1 MiB unless UpdateMaxRecordSize raised it). Raises InvalidArgumentError,
    RecordTooLargeError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgumentError(f"record data must be bytes, got {type(data).__name__}")
    if len(data) > limit_bytes:
        raise RecordTooLargeError(
            f"record data is {len(data)} bytes; the limit is {limit_bytes}",
            size_bytes=len(data),
            limit_bytes=limit_bytes,
        )
    return bytes(data)


def put_records_bytes_max(record_bytes_max: int) -> int:
    """What one put_records may carry (data and partition keys) on a stream whose max record
    size is ``record_bytes_max``: 5 MiB by default, 10 MiB once records may exceed 1 MiB
    (Kinesis's PutRecords limits)."""
    if record_bytes_max <= RECORD_DATA_BYTES_MAX:
        return PUT_RECORDS_BYTES_MAX
    return PUT_RECORDS_LARGE_BYTES_MAX


def check_retention_hours(hours: object) -> int:
    if (
        not isinstance(hours, int)
        or isinstance(hours, bool)
        or not RETENTION_HOURS_MIN <= hours <= RETENTION_HOURS_MAX
    ):
        raise InvalidArgumentError(
            f"retention must be {RETENTION_HOURS_MIN}..{RETENTION_HOURS_MAX} hours, "
            f"got {summary(hours)}"
        )
    return hours


def check_shard_count(count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= SHARD_COUNT_MAX:
        raise InvalidArgumentError(
            f"shard count must be 1..{SHARD_COUNT_MAX}, got {summary(count)}"
        )
    return count


def hash_key_of(partition_key: str) -> int:
    """MD5 of the UTF-8 partition key as a 128-bit big-endian integer (as Kinesis routes)."""
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


def hash_bytes_of(partition_key: str) -> bytes:
    """The same hash as ``hash_key_of`` as 16 big-endian bytes (the stored form)."""
    return hashlib.md5(partition_key.encode()).digest()


def parse_explicit_hash_key(value: object) -> int:
    """Accept an int or a decimal string in 0..2**128-1."""
    if isinstance(value, bool):
        raise InvalidHashKeyError(f"explicit hash key must be a decimal integer, got {value!r}")
    if isinstance(value, str):
        # isascii: str.isdigit() also takes digits int() refuses ("²") and other scripts'
        if not (value.isascii() and value.isdigit()) or len(value) > 39:
            raise InvalidHashKeyError(f"explicit hash key must be decimal, got {summary(value)}")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= HASH_KEY_MAX:
        raise InvalidHashKeyError(f"explicit hash key must be in 0..2**128-1, got {summary(value)}")
    return value


def even_hash_ranges(shard_count: int) -> list[tuple[int, int]]:
    """Split 0..2**128-1 into ``shard_count`` contiguous inclusive ranges of near-equal size."""
    assert 1 <= shard_count <= SHARD_COUNT_MAX
    space = HASH_KEY_MAX + 1
    bounds = [space * i // shard_count for i in range(shard_count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(shard_count)]


def shard_id_of(index: int) -> str:
    assert 0 <= index <= 999_999_999_999
    return f"shardId-{index:012d}"


def shard_index_of(shard_id: object) -> int:
    if not isinstance(shard_id, str):
        raise InvalidArgumentError(f"shard id must be a string, got {summary(shard_id)}")
    m = _SHARD_ID_RE.fullmatch(shard_id)
    if m is None:
        raise InvalidArgumentError(f"malformed shard id {summary(shard_id)}")
    return int(m.group(1))


def make_sequence(shard_index: int, offset: int) -> str:
    assert 0 <= shard_index <= _SHARD_INDEX_MAX and 0 <= offset <= _OFFSET_MASK
    return str(_SEQ_MARK | shard_index << _OFFSET_BITS | offset)


def parse_sequence(sequence: object) -> tuple[int, int]:
    """``(shard_index, offset)`` of a sequence number, or raise InvalidSequenceNumberError."""
    if (
        not isinstance(sequence, str)
        or len(sequence) != 56
        or not (sequence.isascii() and sequence.isdigit())
    ):
        raise InvalidSequenceNumberError(f"malformed sequence number {summary(sequence, 80)}")
    value = int(sequence)
    if value >> 183 != 1:
        raise InvalidSequenceNumberError(f"malformed sequence number {summary(sequence, 80)}")
    return (value >> _OFFSET_BITS) & _SHARD_INDEX_MAX, value & _OFFSET_MASK


PositionKind = Literal[
    "trim_horizon", "latest", "at_sequence", "after_sequence", "at_timestamp", "at_offset"
]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a read starts: like Kinesis's shard iterator types, plus a raw offset."""

    kind: PositionKind
    sequence: str | None = None
    timestamp_ms: int | None = None
    offset: int | None = None

    @staticmethod
    def trim_horizon() -> Position:
        return Position("trim_horizon")

    @staticmethod
    def latest() -> Position:
        return Position("latest")

    @staticmethod
    def at_sequence(sequence: str) -> Position:
        parse_sequence(sequence)
        return Position("at_sequence", sequence=sequence)

    @staticmethod
    def after_sequence(sequence: str) -> Position:
        parse_sequence(sequence)
        return Position("after_sequence", sequence=sequence)

    @staticmethod
    def at_timestamp(timestamp_ms: int) -> Position:
        return Position("at_timestamp", timestamp_ms=timestamp_ms)

    @staticmethod
    def at_offset(offset: int) -> Position:
        return Position("at_offset", offset=offset)

    def to_wire(self) -> dict[str, object]:
        body: dict[str, object] = {"type": self.kind}
        if self.sequence is not None:
            body["sequence"] = self.sequence
        if self.timestamp_ms is not None:
            body["timestamp_ms"] = self.timestamp_ms
        if self.offset is not None:
            body["offset"] = self.offset
        return body

    @staticmethod
    def from_wire(body: object) -> Position:
        """Parse a position sent by a peer; raise InvalidArgumentError on any malformed input."""
        if not isinstance(body, dict):
            raise InvalidArgumentError("position must be a map")
        kind = body.get("type")
        if kind in ("trim_horizon", "latest"):
            return Position(kind)
        if kind in ("at_sequence", "after_sequence"):
            seq = body.get("sequence")
            parse_sequence(seq)
            assert isinstance(seq, str)
            return Position(kind, sequence=seq)
        if kind == "at_timestamp":
            ts = body.get("timestamp_ms")
            if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= TIMESTAMP_MS_MAX:
                raise InvalidArgumentError("at_timestamp needs a timestamp_ms in 0..2**64-1")
            return Position("at_timestamp", timestamp_ms=ts)
        if kind == "at_offset":
            off = body.get("offset")
            if not isinstance(off, int) or isinstance(off, bool) or not 0 <= off <= _OFFSET_MASK:
                raise InvalidArgumentError("at_offset needs an offset in 0..2**64-1")
            return Position("at_offset", offset=off)
        raise InvalidArgumentError(f"unknown position type {summary(kind, 40)}")
