"""The KPL aggregation format: many user records packed into one stream record. Pure, no I/O.

The Kinesis Producer Library packs user records into one Kinesis record laid out as

    F3 89 9A C2 | protobuf AggregatedRecord | MD5 of the protobuf bytes (16 bytes)

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;   // Tag { required string key = 1;
    }                                                //       optional string value = 2; }

The server stores and serves such a record untouched: it is one record, with one sequence
number, as in Kinesis. Readers that ask for it (``deaggregate=True`` on the readers and the
group worker, ``streamd read --deaggregate``) unpack it into its user records, each a ``Record``
with the aggregate's sequence number and its index as ``sub_sequence`` (the KCL's
"subsequence number"), so a group checkpoint can point inside an aggregate.

Why our own decoder and not ``aws-kinesis-agg``: that package needs Google's protobuf runtime
for a three-message schema, and on a bad checksum it hands the record back silently; this one
is ~150 lines with no dependency, bounded (it never allocates more than its input), and raises
one typed error, ``InvalidAggregateError``, for any malformed input (bad magic, bad MD5,
truncation, a wrong wire type, an index past its table, text that is not UTF-8), which a fuzz
test proves. Unknown fields are skipped, as protobuf readers do.

``deaggregate`` follows the KCL where input is not a well-formed aggregate: a record that does
not start with the magic is a plain record and is passed through; one that starts with it but
fails to decode is also passed through (it is user data that happens to begin with those
bytes), after a warning, unless ``strict=True`` asks for the error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from .errors import InvalidAggregateError
from .results import Record

log = logging.getLogger(__name__)

MAGIC: Final = b"\xf3\x89\x9a\xc2"
_DIGEST_BYTES: Final = 16
_VARINT_BYTES_MAX: Final = 10
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class SubRecord(NamedTuple):
    """One user record of an aggregate."""

    partition_key: str
    data: bytes
    explicit_hash_key: str | None = None


def is_aggregated(data: bytes) -> bool:
    """Whether ``data`` starts with the KPL magic and can hold a checksum (not that it is valid)."""
    return len(data) >= len(MAGIC) + _DIGEST_BYTES and data.startswith(MAGIC)


# -- decoding -------------------------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(_VARINT_BYTES_MAX):
        if pos + i >= len(buf):
            raise InvalidAggregateError("aggregate truncated inside a varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >= 1 << 64:
                raise InvalidAggregateError("aggregate varint exceeds 64 bits")
            return value, pos + i + 1
        shift += 7
    raise InvalidAggregateError("aggregate varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterable[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: an int, or the bytes of a length."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise InvalidAggregateError("aggregate has a field number 0")
        if wire_type == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == _LENGTH:
            length, pos = _varint(buf, pos)
            if length > len(buf) - pos:
                raise InvalidAggregateError("aggregate truncated inside a length-delimited field")
            yield number, wire_type, buf[pos : pos + length]
            pos += length
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            if size > len(buf) - pos:
                raise InvalidAggregateError("aggregate truncated inside a fixed-size field")
            pos += size  # no field of the schema has this type: an unknown field, skipped
        else:  # groups (3, 4) and the undefined 6, 7
            raise InvalidAggregateError(f"aggregate uses wire type {wire_type}")


def _text(value: int | memoryview, what: str) -> str:
    if not isinstance(value, memoryview):
        raise InvalidAggregateError(f"aggregate {what} is not length-delimited")
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise InvalidAggregateError(f"aggregate {what} is not UTF-8") from None


def _index(value: int | memoryview, what: str) -> int:
    if not isinstance(value, int):
        raise InvalidAggregateError(f"aggregate {what} is not a varint")
    return value


class _Entry(NamedTuple):
    key_index: int
    hash_key_index: int | None
    data: bytes


def _entry(buf: memoryview) -> _Entry:
    key_index: int | None = None
    hash_key_index: int | None = None
    data: bytes | None = None
    for number, _wire_type, value in _fields(buf):
        if number == 1:
            key_index = _index(value, "partition_key_index")
        elif number == 2:
            hash_key_index = _index(value, "explicit_hash_key_index")
        elif number == 3:
            if not isinstance(value, memoryview):
                raise InvalidAggregateError("aggregate record data is not length-delimited")
            data = bytes(value)
        elif number == 4:
            if not isinstance(value, memoryview):
                raise InvalidAggregateError("aggregate record tag is not a message")
            for tag_number, _, tag_value in _fields(value):  # validated, then dropped
                if tag_number in (1, 2):
                    _text(tag_value, "tag")
    if key_index is None or data is None:
        raise InvalidAggregateError("aggregate record lacks partition_key_index or data")
    return _Entry(key_index, hash_key_index, data)


def decode_aggregated(data: bytes) -> list[SubRecord]:
    """The user records of one KPL aggregate, in order. Raises InvalidAggregateError."""
    if not data.startswith(MAGIC):
        raise InvalidAggregateError("record does not start with the KPL magic F3 89 9A C2")
    if len(data) < len(MAGIC) + _DIGEST_BYTES:
        raise InvalidAggregateError(f"aggregate of {len(data)} bytes is shorter than its framing")
    body = memoryview(data)[len(MAGIC) : len(data) - _DIGEST_BYTES]
    if hashlib.md5(body).digest() != data[len(data) - _DIGEST_BYTES :]:
        raise InvalidAggregateError("aggregate MD5 does not match its contents")
    keys: list[str] = []
    hash_keys: list[str] = []
    entries: list[_Entry] = []
    for number, _wire_type, value in _fields(body):
        if number == 1:
            keys.append(_text(value, "partition key"))
        elif number == 2:
            hash_keys.append(_text(value, "explicit hash key"))
        elif number == 3:
            if not isinstance(value, memoryview):
                raise InvalidAggregateError("aggregate record is not a message")
            entries.append(_entry(value))
    out: list[SubRecord] = []
    for i, entry in enumerate(entries):
        if entry.key_index >= len(keys):
            raise InvalidAggregateError(
                f"aggregate record {i} names partition key {entry.key_index}"
            )
        hash_key = None
        if entry.hash_key_index is not None:
            if entry.hash_key_index >= len(hash_keys):
                raise InvalidAggregateError(
                    f"aggregate record {i} names explicit hash key {entry.hash_key_index}"
                )
            hash_key = hash_keys[entry.hash_key_index]
        out.append(SubRecord(keys[entry.key_index], entry.data, hash_key))
    return out


# -- encoding (what the KPL writes; for tests and for producers that want it) -------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, number: int, value: bytes) -> None:
    _put_varint(out, number << 3 | _LENGTH)
    _put_varint(out, len(value))
    out += value


def encode_aggregated(records: Sequence[SubRecord]) -> bytes:
    """One KPL aggregate of ``records`` (partition and hash keys deduplicated into tables)."""
    keys: dict[str, int] = {}
    hash_keys: dict[str, int] = {}
    entries = bytearray()
    for record in records:
        entry = bytearray()
        _put_varint(entry, 1 << 3 | _VARINT)
        _put_varint(entry, keys.setdefault(record.partition_key, len(keys)))
        if record.explicit_hash_key is not None:
            _put_varint(entry, 2 << 3 | _VARINT)
            _put_varint(entry, hash_keys.setdefault(record.explicit_hash_key, len(hash_keys)))
        _put_bytes(entry, 3, record.data)
        _put_bytes(entries, 3, bytes(entry))
    body = bytearray()
    for key in keys:
        _put_bytes(body, 1, key.encode())
    for hash_key in hash_keys:
        _put_bytes(body, 2, hash_key.encode())
    body += entries
    return MAGIC + bytes(body) + hashlib.md5(body).digest()


# -- records --------------------------------------------------------------------------------------


def deaggregate(records: Iterable[Record], *, strict: bool = False) -> list[Record]:
    """Each aggregate among ``records`` replaced by its user records (``sub_sequence`` 0, 1,
    ...; the aggregate's sequence number, offset and arrival time); other records unchanged.

    A record that starts with the magic but does not decode is kept as it is, with a warning
    (``strict``: InvalidAggregateError is raised instead).
    """
    out: list[Record] = []
    for record in records:
        if not record.data.startswith(MAGIC):
            out.append(record)
            continue
        try:
            subs = decode_aggregated(record.data)
        except InvalidAggregateError as exc:
            if strict:
                raise
            log.warning(
                "record %s of %s starts like a KPL aggregate but is none (%s): kept as it is",
                record.sequence_number,
                record.shard_id,
                exc.message,
            )
            out.append(record)
            continue
        out.extend(
            record._replace(partition_key=sub.partition_key, data=sub.data, sub_sequence=i)
            for i, sub in enumerate(subs)
        )
    return out


def after_sub_sequence(records: list[Record], sequence: str, sub_sequence: int) -> list[Record]:
    """``records`` without the user records at or before (``sequence``, ``sub_sequence``): where
    a checkpoint inside an aggregate resumes (the read starts at the aggregate again). The
    aggregate's record itself, not deaggregated, is kept: processed again, whole."""
    return [
        r
        for r in records
        if not (
            r.sequence_number == sequence
            and r.sub_sequence is not None
            and r.sub_sequence <= sub_sequence
        )
    ]
