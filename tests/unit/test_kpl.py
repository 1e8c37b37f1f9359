"""The KPL aggregation codec (streamd_client/kpl.py): golden bytes written out by hand from the
protobuf encoding rules, round trips, malformed input (always InvalidAggregateError), a fuzz
target, and record deaggregation with sub-sequence numbers."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd_client.errors import InvalidAggregateError
from streamd_client.kpl import (
    MAGIC,
    SubRecord,
    after_sub_sequence,
    deaggregate,
    decode_aggregated,
    encode_aggregated,
    is_aggregated,
)
from streamd_client.results import Record


def framed(body: bytes) -> bytes:
    return MAGIC + body + hashlib.md5(body).digest()


# partition_key_table "a"; records { partition_key_index 0, data "b" }
GOLDEN_BODY = bytes.fromhex("0a0161" + "1a05" + "0800" + "1a0162")


def test_golden_bytes_of_one_record() -> None:
    assert encode_aggregated([SubRecord("a", b"b")]) == framed(GOLDEN_BODY)
    assert decode_aggregated(framed(GOLDEN_BODY)) == [SubRecord("a", b"b")]
    assert is_aggregated(framed(GOLDEN_BODY))


def test_golden_bytes_with_a_hash_key_a_tag_and_an_unknown_field() -> None:
    body = bytes.fromhex(
        "0a026b31"  # partition_key_table "k1"
        "120135"  # explicit_hash_key_table "5"
        "1a0f"  # records, 15 bytes:
        + "0800"  # partition_key_index 0
        + "1000"  # explicit_hash_key_index 0
        + "1a0178"  # data "x"
        + "22060a0174120176"  # tags { key "t" value "v" }
        + "2801"  # an unknown varint field 5 of AggregatedRecord: skipped
    )
    assert decode_aggregated(framed(body)) == [SubRecord("k1", b"x", "5")]


sub_records = st.lists(
    st.builds(
        SubRecord,
        st.text(min_size=1, max_size=20),
        st.binary(max_size=64),
        st.none() | st.integers(0, 2**128 - 1).map(str),
    ),
    max_size=20,
)


@given(sub_records)
def test_round_trip(records: list[SubRecord]) -> None:
    assert decode_aggregated(encode_aggregated(records)) == records


def test_a_bad_md5_is_refused() -> None:
    data = bytearray(framed(GOLDEN_BODY))
    data[-1] ^= 1
    with pytest.raises(InvalidAggregateError, match="MD5"):
        decode_aggregated(bytes(data))


@pytest.mark.parametrize("cut", range(1, len(GOLDEN_BODY)))
def test_a_truncated_body_is_refused_even_with_a_matching_md5(cut: int) -> None:
    body = GOLDEN_BODY[:cut]
    try:
        got = decode_aggregated(framed(body))
    except InvalidAggregateError:
        return
    # Cuts at a field boundary leave a well-formed (shorter) message: a record lacking a
    # field is refused; a table without records is an empty aggregate.
    assert got == []


@pytest.mark.parametrize(
    "body, reason",
    [
        (bytes.fromhex("1a020801"), "lacks"),  # no data
        (bytes.fromhex("1a050803" + "1a0162"), "names partition key"),  # index past the table
        (bytes.fromhex("0a01611a07080010001a0162"), "explicit hash key"),  # no hash-key table
        (bytes.fromhex("0a01ff"), "UTF-8"),  # a key that is not UTF-8
        (bytes.fromhex("0b"), "wire type"),  # a group start
        (bytes.fromhex("08ffffffffffffffffffff01"), "varint"),  # an 11-byte varint
        (bytes.fromhex("0a05"), "truncated"),  # a length past the end
        (bytes.fromhex("0d0000"), "truncated"),  # a fixed32 past the end
        (bytes.fromhex("0001"), "field number 0"),
        (bytes.fromhex("1a01"), "truncated"),
        (bytes.fromhex("1801"), "not a message"),  # field 3 as a varint
    ],
)
def test_malformed_bodies_are_refused_with_the_typed_error(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidAggregateError, match=reason):
        decode_aggregated(framed(body))


def test_framing_shorter_than_a_checksum_and_no_magic_are_refused() -> None:
    with pytest.raises(InvalidAggregateError, match="shorter"):
        decode_aggregated(MAGIC + b"\x00" * 15)
    with pytest.raises(InvalidAggregateError, match="magic"):
        decode_aggregated(b"plain record data of some length")
    assert not is_aggregated(MAGIC + b"\x00" * 15)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_any_body_decodes_or_raises_the_typed_error(body: bytes) -> None:
    try:
        decode_aggregated(framed(body))
    except InvalidAggregateError:
        pass


def record(data: bytes, offset: int = 7) -> Record:
    return Record("shardId-000000000000", f"seq{offset}", "outer", data, 1000, offset)


def test_deaggregate_expands_aggregates_with_sub_sequences_and_keeps_others() -> None:
    aggregate = encode_aggregated([SubRecord("k1", b"one"), SubRecord("k2", b"two", "9")])
    plain = record(b"plain", offset=8)
    out = deaggregate([record(aggregate), plain])
    assert [(r.partition_key, r.data, r.sub_sequence) for r in out] == [
        ("k1", b"one", 0),
        ("k2", b"two", 1),
        ("outer", b"plain", None),
    ]
    assert {r.sequence_number for r in out[:2]} == {"seq7"} and out[0].offset == 7
    assert out[2] is plain


def test_deaggregate_keeps_a_malformed_aggregate_unless_strict() -> None:
    bad = record(MAGIC + b"x" * 30)
    assert deaggregate([bad]) == [bad]
    with pytest.raises(InvalidAggregateError):
        deaggregate([bad], strict=True)


def test_after_sub_sequence_drops_what_a_checkpoint_inside_an_aggregate_covers() -> None:
    aggregate = encode_aggregated([SubRecord(f"k{i}", b"%d" % i) for i in range(4)])
    records = deaggregate([record(aggregate), record(b"next", offset=8)])
    left = after_sub_sequence(records, "seq7", 1)
    assert [(r.sequence_number, r.sub_sequence) for r in left] == [
        ("seq7", 2),
        ("seq7", 3),
        ("seq8", None),
    ]
