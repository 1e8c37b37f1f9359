"""The record-batch format (batch.py): round trips, corruption detection, restamp, golden bytes.

The decoders' contract: for any input, parse_header/verify_payload/decode_records either succeed
or raise CorruptDataError; and no single-byte change of a batch goes unnoticed.
"""

from __future__ import annotations

import struct

import crc32c
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd_client import batch
from streamd_client.errors import CorruptDataError, InvalidBatchError, WrongShardError
from streamd_client.model import hash_bytes_of

keys = st.text(min_size=1, max_size=40)
records = st.lists(st.tuples(keys, st.binary(max_size=200)), min_size=1, max_size=30)
codecs = st.sampled_from([batch.CODEC_NONE, batch.CODEC_ZSTD])


def _encode(items: list[tuple[str, bytes]], **fields: int) -> bytes:
    return batch.encode_batch(
        [k for k, _ in items], [hash_bytes_of(k) for k, _ in items], [d for _, d in items], **fields
    )


def _decode_all(blob: bytes) -> batch.Records:
    header = batch.parse_header(blob)
    batch.verify_payload(blob, header)
    return batch.decode_records(blob, header)


@given(records, codecs, st.integers(0, 2**63 - 1), st.integers(0, 2**32 - 1))
def test_batches_round_trip(
    items: list[tuple[str, bytes]], codec: int, producer_id: int, producer_seq: int
) -> None:
    blob = _encode(items, codec=codec, producer_id=producer_id, producer_seq=producer_seq)
    header = batch.parse_header(blob)
    assert header.length == len(blob)
    assert header.record_count == len(items)
    assert (header.codec, header.producer_id, header.producer_seq) == (
        codec,
        producer_id,
        producer_seq,
    )
    decoded = _decode_all(blob)
    assert decoded.keys == [k for k, _ in items]
    assert decoded.datas == [d for _, d in items]
    assert decoded.hashes == [hash_bytes_of(k) for k, _ in items]


@settings(max_examples=25, deadline=None)
@given(records, codecs, st.integers(1, 255))
def test_every_single_byte_corruption_is_detected(
    items: list[tuple[str, bytes]], codec: int, mask: int
) -> None:
    blob = _encode(items, codec=codec)
    for at in range(len(blob)):
        damaged = bytearray(blob)
        damaged[at] ^= mask
        with pytest.raises(CorruptDataError):
            _decode_all(bytes(damaged))


@given(records, codecs, st.data())
def test_truncated_batches_are_corrupt(
    items: list[tuple[str, bytes]], codec: int, data: st.DataObject
) -> None:
    blob = _encode(items, codec=codec)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CorruptDataError):
        _decode_all(blob[:cut])


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_garbage_only_ever_raises_corrupt_data(garbage: bytes) -> None:
    try:
        list(batch.iter_batches(garbage))
        _decode_all(garbage)
    except CorruptDataError:
        pass


def _sealed(header_fields: list[int], payload: bytes) -> bytes:
    """A batch whose CRCs are right whatever its header claims (a crafted, lying batch)."""
    fields = [*header_fields[:12], crc32c.crc32c(payload), 0]
    header = bytearray(struct.pack(">HBBIQIIQQQIIII", *fields))
    struct.pack_into(">I", header, 60, crc32c.crc32c(bytes(header[:60])))
    return bytes(header) + payload


def test_a_zstd_frame_lying_about_its_size_is_corrupt_not_a_memory_bomb() -> None:
    payload = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))  # 64 MiB in ~2 kB
    length = batch.HEADER_BYTES + len(payload)
    blob = _sealed([batch.MAGIC, 1, batch.CODEC_ZSTD, length, 0, 1, 0, 0, 0, 0, 0, 100], payload)
    header = batch.parse_header(blob)
    batch.verify_payload(blob, header)
    with pytest.raises(CorruptDataError):
        batch.decode_records(blob, header)


def test_valid_crcs_over_a_payload_of_the_wrong_shape_are_corrupt() -> None:
    import cbor2

    for columns in ([["k"], [b"h"]], {"k": 1}, [["k"], [b"h"], [b"d", b"e"]], b"raw"):
        raw = cbor2.dumps(columns)
        blob = _sealed([batch.MAGIC, 1, 0, 64 + len(raw), 0, 1, 0, 0, 0, 0, 0, len(raw)], raw)
        with pytest.raises(CorruptDataError):
            _decode_all(blob)


@given(records, st.integers(0, 2**63), st.integers(0, 2**32 - 1), st.integers(0, 2**62))
def test_restamp_rewrites_the_header_and_keeps_the_payload_bytes(
    items: list[tuple[str, bytes]], base_offset: int, epoch: int, arrival_ms: int
) -> None:
    blob = _encode(items, producer_id=9, producer_seq=4)
    stamped = batch.restamp(
        blob,
        base_offset=base_offset,
        leader_epoch=epoch,
        first_arrival_ms=arrival_ms,
        last_arrival_ms=arrival_ms + 1,
    )
    assert stamped[batch.HEADER_BYTES :] == blob[batch.HEADER_BYTES :]
    before, after = batch.parse_header(blob), batch.parse_header(stamped)
    assert (after.base_offset, after.leader_epoch) == (base_offset, epoch)
    assert (after.first_arrival_ms, after.last_arrival_ms) == (arrival_ms, arrival_ms + 1)
    assert after.next_offset == base_offset + len(items)
    unchanged = ("producer_id", "producer_seq", "payload_crc", "record_count", "length")
    assert all(getattr(after, f) == getattr(before, f) for f in unchanged)
    assert _decode_all(stamped) == _decode_all(blob)


def test_iter_batches_walks_concatenated_batches_and_stops_at_damage() -> None:
    blobs = [_encode([(f"k{i}", b"%d" % i)] * (i + 1), base_offset=i * 10) for i in range(3)]
    found = list(batch.iter_batches(b"".join(blobs)))
    assert [h.base_offset for _, h in found] == [0, 10, 20]
    assert [at for at, _ in found] == [0, len(blobs[0]), len(blobs[0]) + len(blobs[1])]
    damaged = bytearray(b"".join(blobs))
    damaged[len(blobs[0]) + batch.HEADER_BYTES] ^= 1
    walked = []
    with pytest.raises(CorruptDataError):
        for _, header in batch.iter_batches(bytes(damaged)):
            walked.append(header.base_offset)
    assert walked == [0]


def test_check_records_enforces_the_shard_range_and_limits() -> None:
    low, high = (b"\x40" + b"\0" * 15), (b"\x7f" + b"\xff" * 15)
    inside = batch.Records(["k"], [b"\x50" + b"\0" * 15], [b"d"])
    batch.check_records(inside, low, high)
    with pytest.raises(WrongShardError):
        batch.check_records(batch.Records(["k"], [b"\x80" + b"\0" * 15], [b"d"]), low, high)
    with pytest.raises(InvalidBatchError):
        batch.check_records(batch.Records([""], inside.hashes, [b"d"]), low, high)
    with pytest.raises(InvalidBatchError):
        batch.check_records(batch.Records(["k"], [b"\x50"], [b"d"]), low, high)
    with pytest.raises(InvalidBatchError):
        batch.check_records(batch.Records(["k"], inside.hashes, ["text"]), low, high)  # type: ignore[list-item]


def test_golden_batch_bytes() -> None:
    blob = batch.encode_batch(
        ["k"], [bytes(range(16))], [b"v"], codec=batch.CODEC_NONE, producer_id=7, producer_seq=3
    )
    assert blob.hex() == (
        "5344"  # magic "SD"
        "01"  # format version
        "00"  # codec: none
        "00000059"  # length 89 = 64 + 25
        "0000000000000000"  # base offset
        "00000001"  # record count
        "00000000"  # leader epoch
        "0000000000000000"  # first arrival ms
        "0000000000000000"  # last arrival ms
        "0000000000000007"  # producer id
        "00000003"  # producer sequence
        "00000019"  # uncompressed payload length 25
        "ad8f4623"  # payload CRC32C
        "ab14350b"  # header CRC32C
        "83"  # array(3): the three columns
        "81616b"  # ["k"]
        "8150000102030405060708090a0b0c0d0e0f"  # [16-byte hash]
        "814176"  # [b"v"]
    )
