"""The record-batch format, shared by producers, the server's storage, and readers.

A batch is a fixed 64-byte header followed by a payload (docs/storage-format.md has every byte):

    off size field
    0   2    magic 0x5344 ("SD")
    2   1    format version (1)
    3   1    codec (0 = none, 1 = zstd)
    4   4    batch length in bytes, header included
    8   8    base offset (server-assigned)
    16  4    record count
    20  4    leader epoch (server-assigned)
    24  8    first arrival time, ms since the epoch (server-assigned)
    32  8    last arrival time, ms since the epoch (server-assigned)
    40  8    producer id (0 = not idempotent)
    48  4    producer sequence (per producer and shard, +1 per batch)
    52  4    uncompressed payload length
    56  4    payload CRC32C (over bytes 64..length)
    60  4    header CRC32C (over bytes 0..60)

All integers are big-endian. The payload, once decompressed, is one CBOR array of three equally
long arrays: partition keys (text), hash keys (16-byte big-endian byte strings) and data (byte
strings). Columns rather than per-record maps because the server validates a client-built batch
with C-level passes (``min``/``max`` over the hash column against the shard's range) instead of
a Python loop per record, and because like values compress better together.

Why two CRCs: the payload CRC is computed once by whoever encodes the payload (often the
producer) and never again; the server assigns offsets, epoch and arrival times by rewriting the
header and recomputing only the 60-byte header CRC. The payload is never re-encoded.

Every decoder here raises only ``CorruptDataError`` (bytes that fail a check) or
``InvalidBatchError`` (well-formed but over a limit) for any input.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import cbor2
import crc32c
import zstandard

from . import strict_cbor
from .errors import CorruptDataError, InvalidBatchError, WrongShardError
from .model import PARTITION_KEY_CHARS_MAX, RECORD_DATA_BYTES_MAX

MAGIC = 0x5344
FORMAT_VERSION = 1
CODEC_NONE = 0
CODEC_ZSTD = 1
# High bit of the codec byte: the payload is sealed at rest (streamd/storage/at_rest.py). Only
# the server's stored form has it; the server opens such batches before any reader sees them.
CODEC_ENCRYPTED = 0x80
HEADER_BYTES = 64
HASH_BYTES = 16

BATCH_RECORDS_MAX = 10_000
# Uncompressed: above one write of 10 MiB of data and keys (a put_records to a stream of large
# records, each a batch of its own) and its framing.
BATCH_PAYLOAD_BYTES_MAX = 11 * 1024 * 1024
BATCH_BYTES_MAX = HEADER_BYTES + BATCH_PAYLOAD_BYTES_MAX + 1024  # zstd may expand a little

_HEADER = struct.Struct(">HBBIQIIQQQIIII")
assert _HEADER.size == HEADER_BYTES
_HEADER_CRC_AT = 60
_PAYLOAD_CRC_AT = 56
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ARRIVALS = struct.Struct(">QQ")

# zstandard's (de)compressor objects are not thread-safe and the server encodes in worker
# threads, so each thread gets its own (they are reused: creating one costs more than a batch).
_codecs = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    try:
        return _codecs.compressor  # type: ignore[no-any-return]
    except AttributeError:
        _codecs.compressor = zstandard.ZstdCompressor(level=1)
        return _codecs.compressor  # type: ignore[no-any-return]


def _decompressor() -> zstandard.ZstdDecompressor:
    try:
        return _codecs.decompressor  # type: ignore[no-any-return]
    except AttributeError:
        _codecs.decompressor = zstandard.ZstdDecompressor()
        return _codecs.decompressor  # type: ignore[no-any-return]


class BatchHeader(NamedTuple):
    magic: int
    version: int
    codec: int
    length: int
    base_offset: int
    record_count: int
    leader_epoch: int
    first_arrival_ms: int
    last_arrival_ms: int
    producer_id: int
    producer_seq: int
    uncompressed_length: int
    payload_crc: int
    header_crc: int

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


class Records(NamedTuple):
    """A decoded payload: three equally long columns."""

    keys: list[str]
    hashes: list[bytes]
    datas: list[bytes]


def encode_batch(
    keys: Sequence[str],
    hashes: Sequence[bytes],
    datas: Sequence[bytes],
    *,
    base_offset: int = 0,
    leader_epoch: int = 0,
    first_arrival_ms: int = 0,
    last_arrival_ms: int = 0,
    producer_id: int = 0,
    producer_seq: int = 0,
    codec: int = CODEC_ZSTD,
) -> bytes:
    """Encode records into one batch. Callers validate records; this asserts the shape."""
    count = len(keys)
    assert count == len(hashes) == len(datas) and 1 <= count <= BATCH_RECORDS_MAX
    raw = cbor2.dumps([list(keys), list(hashes), list(datas)])
    if len(raw) > BATCH_PAYLOAD_BYTES_MAX:
        raise InvalidBatchError(
            f"batch payload is {len(raw)} bytes; the limit is {BATCH_PAYLOAD_BYTES_MAX}"
        )
    payload = _compressor().compress(raw) if codec == CODEC_ZSTD else raw
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        codec,
        HEADER_BYTES + len(payload),
        base_offset,
        count,
        leader_epoch,
        first_arrival_ms,
        last_arrival_ms,
        producer_id,
        producer_seq,
        len(raw),
        crc32c.crc32c(payload),
        0,
    )
    return _seal_header(bytearray(header)) + payload


def seal_header(header: bytearray) -> bytes:
    """The header with its CRC (bytes 60..64) recomputed over bytes 0..60."""
    _U32.pack_into(header, _HEADER_CRC_AT, crc32c.crc32c(memoryview(header)[:_HEADER_CRC_AT]))
    return bytes(header)


_seal_header = seal_header


def parse_header(buf: bytes | bytearray | memoryview, at: int = 0) -> BatchHeader:
    """Parse and check the header at ``buf[at:]``. Raises CorruptDataError if it fails a check.

    Checks the header CRC, magic, version, codec and length sanity; not the payload.
    """
    if len(buf) - at < HEADER_BYTES:
        raise CorruptDataError(f"truncated batch header at byte {at}")
    view = memoryview(buf)[at : at + HEADER_BYTES]
    header = BatchHeader._make(_HEADER.unpack(view))
    if crc32c.crc32c(view[:_HEADER_CRC_AT]) != header.header_crc:
        raise CorruptDataError(f"batch header CRC mismatch at byte {at}")
    if header.magic != MAGIC or header.version != FORMAT_VERSION:
        raise CorruptDataError(f"bad batch magic or version at byte {at}")
    if header.codec & ~CODEC_ENCRYPTED not in (CODEC_NONE, CODEC_ZSTD):
        raise CorruptDataError(f"unknown batch codec {header.codec} at byte {at}")
    if not HEADER_BYTES < header.length <= BATCH_BYTES_MAX:
        raise CorruptDataError(f"batch length {header.length} out of range at byte {at}")
    if not 1 <= header.record_count <= BATCH_RECORDS_MAX:
        raise CorruptDataError(f"batch record count {header.record_count} out of range")
    if header.uncompressed_length > BATCH_PAYLOAD_BYTES_MAX:
        raise CorruptDataError(f"batch payload length {header.uncompressed_length} out of range")
    return header


def verify_payload(buf: bytes | bytearray | memoryview, header: BatchHeader, at: int = 0) -> None:
    """Check the payload CRC of the batch at ``buf[at:]`` whose header is ``header``."""
    end = at + header.length
    if len(buf) < end:
        raise CorruptDataError(f"truncated batch payload at byte {at}")
    if crc32c.crc32c(memoryview(buf)[at + HEADER_BYTES : end]) != header.payload_crc:
        raise CorruptDataError(
            f"batch payload CRC mismatch at offset {header.base_offset}",
            base_offset=header.base_offset,
            record_count=header.record_count,
        )


def decode_records(
    buf: bytes | bytearray | memoryview, header: BatchHeader, at: int = 0
) -> Records:
    """Decompress and decode the payload of a verified batch. Raises CorruptDataError."""
    if header.codec & CODEC_ENCRYPTED:
        raise CorruptDataError("batch is sealed at rest (encrypted); only the server opens it")
    payload = memoryview(buf)[at + HEADER_BYTES : at + header.length]
    try:
        if header.codec == CODEC_ZSTD:
            # zstd ignores max_output_size when the frame declares its content size, so a frame
            # claiming a huge size would be allocated in full (MemoryError, or a bomb): check
            # the claim against the header's bounded length first. encode_batch always writes it.
            if zstandard.frame_content_size(payload) != header.uncompressed_length:
                raise CorruptDataError("zstd frame content size differs from the batch header")
            raw = _decompressor().decompress(payload, max_output_size=header.uncompressed_length)
        else:
            raw = bytes(payload)
    except zstandard.ZstdError as exc:
        raise CorruptDataError(f"batch payload does not decompress: {exc}") from None
    if len(raw) != header.uncompressed_length:
        raise CorruptDataError("batch payload length differs from its header")
    columns = _columns(raw, header.record_count)
    return Records(columns[0], columns[1], columns[2])


def _columns(raw: bytes, count: int) -> list[list[Any]]:
    """The three columns of ``count`` items each, decoded strictly (``strict_cbor``: no tags,
    no indefinite lengths, no containers inside a column, nothing after the third column).
    Each column's head is checked to hold ``count`` items before it is decoded, so a payload
    cannot make more than ``3 * count`` items whatever its bytes. Raises CorruptDataError."""
    if raw[:1] != b"\x83":
        raise CorruptDataError("batch payload is not an array of three columns")
    columns: list[list[Any]] = []
    reader = strict_cbor.ItemReader(raw, depth_max=1, read_size=_READ_CHUNK_BYTES, start=1)
    for _ in range(3):
        if _array_length(raw, reader.at) != count:
            raise CorruptDataError(
                "batch payload does not hold three columns of record_count items"
            )
        try:
            columns.append(reader.next())
        except strict_cbor.StrictCborError as exc:
            raise CorruptDataError(f"batch payload refused: {exc}") from None
    if reader.at != len(raw):
        raise CorruptDataError(f"{len(raw) - reader.at} bytes after the batch payload's columns")
    return columns


# cbor2 reads a payload in chunks of this and seeks back over what an item did not use: one
# chunk per column beyond the payload itself, not a copy of the rest of it per column.
_READ_CHUNK_BYTES = 256 * 1024


def _array_length(raw: bytes, at: int) -> int:
    """The item count of the definite-length array head at ``raw[at]``, or -1."""
    if at >= len(raw) or raw[at] >> 5 != 4:
        return -1
    info = raw[at] & 0x1F
    if info < 24:
        return info
    if info > 26:  # 8-byte lengths are beyond any record count; 31 is indefinite
        return -1
    width = 1 << (info - 24)
    return int.from_bytes(raw[at + 1 : at + 1 + width], "big")


def check_records(
    records: Records,
    hash_low: bytes,
    hash_high: bytes,
    record_bytes_max: int = RECORD_DATA_BYTES_MAX,
) -> None:
    """Validate a client-built batch's records against the limits (``record_bytes_max``: the
    stream's max record size) and the shard's hash range.

    ``hash_low``/``hash_high`` are the shard's inclusive range as 16-byte big-endian strings, so
    byte order equals numeric order. C-level passes only; no Python loop per record.
    """
    keys, hashes, datas = records
    if not all(type(k) is str for k in keys) or not all(type(d) is bytes for d in datas):
        raise InvalidBatchError("partition keys must be text and data byte strings")
    if not all(type(h) is bytes for h in hashes) or {len(h) for h in hashes} != {HASH_BYTES}:
        raise InvalidBatchError("hash keys must be 16-byte strings")
    if min(map(len, keys)) < 1 or max(map(len, keys)) > PARTITION_KEY_CHARS_MAX:
        raise InvalidBatchError(f"partition keys must be 1..{PARTITION_KEY_CHARS_MAX} characters")
    if max(map(len, datas)) > record_bytes_max:
        raise InvalidBatchError(f"a record's data exceeds {record_bytes_max} bytes")
    if min(hashes) < hash_low or max(hashes) > hash_high:
        raise WrongShardError("a record's hash key lies outside the shard's range")


def restamp(
    batch: bytes | bytearray,
    *,
    base_offset: int,
    leader_epoch: int,
    first_arrival_ms: int,
    last_arrival_ms: int,
) -> bytes:
    """Assign server fields by rewriting the header only; the payload bytes are untouched."""
    header = bytearray(batch[:HEADER_BYTES])
    _U64.pack_into(header, 8, base_offset)
    _U32.pack_into(header, 20, leader_epoch)
    _ARRIVALS.pack_into(header, 24, first_arrival_ms, last_arrival_ms)
    sealed = _seal_header(header)
    return sealed + bytes(memoryview(batch)[HEADER_BYTES:])


def iter_batches(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for each whole batch in a buffer of concatenated batches.

    Verifies header and payload CRCs; raises CorruptDataError at the first bad or partial batch.
    """
    at = 0
    end = len(buf)
    while at < end:
        header = parse_header(buf, at)
        verify_payload(buf, header, at)
        yield at, header
        at += header.length
