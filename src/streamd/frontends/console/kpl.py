"""KPL-aggregated records, recognised and opened for display (sans-I/O, no dependencies).

The Kinesis Producer Library packs many user records into one Kinesis record: the 4 magic bytes
``F3 89 9A C2``, a protobuf ``AggregatedRecord``, then the MD5 of that protobuf (16 bytes):

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;   // skipped here
    }

A record is aggregated only if the magic is there *and* the MD5 matches (so ordinary data that
happens to start with the magic is shown as it is). The protobuf reader below knows just the
wire types these messages use (varint and length-delimited, skipping 64- and 32-bit fields);
anything else, a truncated field, an index out of its table, or more than ``records_max``
sub-records makes ``deaggregate`` return None: the console then shows the raw bytes.
"""

from __future__ import annotations

import hashlib
from typing import Final, NamedTuple

KPL_MAGIC: Final = b"\xf3\x89\x9a\xc2"
_DIGEST_BYTES: Final = 16
SUB_RECORDS_MAX: Final = 10_000


class SubRecord(NamedTuple):
    partition_key: str
    explicit_hash_key: str | None
    data: bytes


class _Malformed(Exception):
    pass


def looks_aggregated(data: bytes) -> bool:
    """The magic, room for a digest, and the digest matching the protobuf between them."""
    if len(data) < len(KPL_MAGIC) + _DIGEST_BYTES or not data.startswith(KPL_MAGIC):
        return False
    body, digest = data[len(KPL_MAGIC) : -_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    return hashlib.md5(body, usedforsecurity=False).digest() == digest


def deaggregate(data: bytes, records_max: int = SUB_RECORDS_MAX) -> list[SubRecord] | None:
    """The user records inside a KPL-aggregated record, or None if it is not one (or is
    malformed, or holds more than ``records_max``)."""
    if not looks_aggregated(data):
        return None
    body = data[len(KPL_MAGIC) : -_DIGEST_BYTES]
    keys: list[str] = []
    hash_keys: list[str] = []
    raw_records: list[bytes] = []
    try:
        for field, value in _fields(body):
            if not isinstance(value, bytes):
                continue
            if field == 1:
                keys.append(value.decode("utf-8", "replace"))
            elif field == 2:
                hash_keys.append(value.decode("utf-8", "replace"))
            elif field == 3:
                raw_records.append(value)
                if len(raw_records) > records_max:
                    return None
        return [_record(raw, keys, hash_keys) for raw in raw_records]
    except _Malformed:
        return None


def _record(raw: bytes, keys: list[str], hash_keys: list[str]) -> SubRecord:
    key_index: int | None = None
    hash_index: int | None = None
    data: bytes | None = None
    for field, value in _fields(raw):
        if field == 1 and isinstance(value, int):
            key_index = value
        elif field == 2 and isinstance(value, int):
            hash_index = value
        elif field == 3 and isinstance(value, bytes):
            data = value
    if key_index is None or data is None or key_index >= len(keys):
        raise _Malformed
    if hash_index is not None and hash_index >= len(hash_keys):
        raise _Malformed
    return SubRecord(keys[key_index], None if hash_index is None else hash_keys[hash_index], data)


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message. Raises _Malformed."""
    out: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(buf):
        tag, at = _varint(buf, at)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, at = _varint(buf, at)
            out.append((field, value))
        elif wire_type == 2:
            size, at = _varint(buf, at)
            if at + size > len(buf):
                raise _Malformed
            out.append((field, buf[at : at + size]))
            at += size
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        else:
            raise _Malformed
        if at > len(buf):
            raise _Malformed
    return out


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def aggregate(records: list[tuple[str, bytes]]) -> bytes:
    """A KPL-aggregated record of (partition key, data) pairs (tests and demos use it)."""
    keys: list[str] = []
    body = bytearray()
    for key, _ in records:
        if key not in keys:
            keys.append(key)
            body += _len_field(1, key.encode())
    for key, data in records:
        inner = _tag(1, 0) + _encode_varint(keys.index(key)) + _len_field(3, data)
        body += _len_field(3, inner)
    raw = bytes(body)
    return KPL_MAGIC + raw + hashlib.md5(raw, usedforsecurity=False).digest()


def _tag(field: int, wire_type: int) -> bytes:
    return _encode_varint(field << 3 | wire_type)


def _len_field(field: int, value: bytes) -> bytes:
    return _tag(field, 2) + _encode_varint(len(value)) + value


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
