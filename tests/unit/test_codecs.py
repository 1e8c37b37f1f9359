"""The small shared codecs: sequence numbers, hash ranges, positions, error bodies, answers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd_client import errors, model, results
from streamd_client.model import Position

shard_indexes = st.integers(0, 999_999_999_999)
offsets = st.integers(0, 2**64 - 1)


@given(shard_indexes, offsets)
def test_sequence_numbers_round_trip(shard_index: int, offset: int) -> None:
    sequence = model.make_sequence(shard_index, offset)
    assert len(sequence) == 56 and sequence.isdigit()
    assert model.parse_sequence(sequence) == (shard_index, offset)


@given(shard_indexes, offsets, shard_indexes, offsets)
def test_sequence_string_order_is_numeric_order(i: int, a: int, j: int, b: int) -> None:
    x, y = model.make_sequence(i, a), model.make_sequence(j, b)
    assert (x < y) == ((i, a) < (j, b))


@pytest.mark.parametrize(
    "bad",
    # The last: Arabic-Indic digits pass str.isdigit() but are not a sequence number.
    [None, 5, "", "1" * 55, "1" * 57, "x" * 56, "9" * 56, "0" * 56, "\u0661" * 56],
)
def test_malformed_sequence_numbers_are_refused(bad: Any) -> None:
    with pytest.raises(errors.InvalidSequenceNumberError):
        model.parse_sequence(bad)


@settings(max_examples=200)
@given(st.integers(1, model.SHARD_COUNT_MAX))
def test_even_hash_ranges_tile_the_whole_hash_space(shard_count: int) -> None:
    ranges = model.even_hash_ranges(shard_count)
    assert len(ranges) == shard_count
    assert ranges[0][0] == 0 and ranges[-1][1] == model.HASH_KEY_MAX
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1
    sizes = {end - start + 1 for start, end in ranges}
    assert max(sizes) - min(sizes) <= 1


@given(st.text(min_size=1, max_size=model.PARTITION_KEY_CHARS_MAX))
def test_hash_key_and_hash_bytes_agree(key: str) -> None:
    assert model.hash_bytes_of(key) == model.hash_key_of(key).to_bytes(16, "big")


def test_explicit_hash_keys() -> None:
    assert model.parse_explicit_hash_key("0") == 0
    assert model.parse_explicit_hash_key(str(model.HASH_KEY_MAX)) == model.HASH_KEY_MAX
    for bad in (-1, model.HASH_KEY_MAX + 1, "1.5", "-1", "", True, None, "1" * 40):
        with pytest.raises(errors.InvalidHashKeyError):
            model.parse_explicit_hash_key(bad)


positions = st.one_of(
    st.just(Position.trim_horizon()),
    st.just(Position.latest()),
    st.builds(Position.at_sequence, st.builds(model.make_sequence, shard_indexes, offsets)),
    st.builds(Position.after_sequence, st.builds(model.make_sequence, shard_indexes, offsets)),
    st.builds(Position.at_timestamp, st.integers(0, 2**63)),
    st.builds(Position.at_offset, offsets),
)


@given(positions)
def test_positions_round_trip_on_the_wire(position: Position) -> None:
    assert Position.from_wire(position.to_wire()) == position


_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)
_position_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["trim_horizon", "at_offset", "at_sequence", "at_timestamp", "x"])},
    optional={"offset": _json_like, "sequence": _json_like, "timestamp_ms": _json_like},
)


@settings(max_examples=300)
@given(_json_like | _position_like)
def test_position_from_wire_only_raises_invalid_argument(body: Any) -> None:
    try:
        Position.from_wire(body)
    except errors.InvalidArgumentError:
        pass


@pytest.mark.parametrize("code", sorted(errors.ERRORS_BY_CODE))
def test_every_error_code_round_trips(code: str) -> None:
    error = errors.ERRORS_BY_CODE[code]("what happened", limit=3)
    back = errors.error_from_wire(error.to_wire())
    assert type(back) is type(error)
    assert (back.code, back.message, back.details) == (code, "what happened", {"limit": 3})


def test_unknown_and_malformed_error_bodies() -> None:
    unknown = errors.error_from_wire({"code": "FROM_THE_FUTURE", "message": "m"})
    assert type(unknown) is errors.StreamdError
    assert unknown.details == {"wire_code": "FROM_THE_FUTURE"}
    for body in (
        None,
        [],
        {"code": 1, "message": "m"},
        {"code": "X"},
        {"code": "X", "message": "m", "details": 3},
    ):
        assert isinstance(errors.error_from_wire(body), errors.ProtocolError)


def test_retryable_codes_match_the_protocol() -> None:
    retryable = {code for code, cls in errors.ERRORS_BY_CODE.items() if cls.retryable}
    assert retryable == {
        "THROTTLED",
        "NOT_LEADER",
        "SHARD_UNAVAILABLE",
        "SHARD_CLOSED",
        "STORAGE_FULL",
        "LIMIT_EXCEEDED",
        "SHUTTING_DOWN",
        "METADATA_UNAVAILABLE",
        "COORDINATOR_UNAVAILABLE",
        "CONNECTION_LOST",
        "TIMEOUT",
    }


_parsers = [
    results.stream_from_wire,
    results.shard_from_wire,
    results.append_from_wire,
    results.raw_read_from_wire,
    lambda body: results.put_records_from_wire(body, 1),
]


@settings(max_examples=300)
@given(_json_like, st.sampled_from(_parsers))
def test_answer_parsers_only_raise_protocol_error(body: Any, parse: Any) -> None:
    try:
        parse(body)
    except errors.ProtocolError:
        pass


def test_answer_parsers_accept_the_documented_shapes() -> None:
    shard = {
        "shard_id": "shardId-000000000000",
        "hash_key_start": 0,
        "hash_key_end": model.HASH_KEY_MAX,
        "starting_sequence": model.make_sequence(0, 0),
        "ending_sequence": None,
        "parent_shard_id": None,
        "adjacent_parent_shard_id": None,
    }
    stream = {
        "name": "s",
        "status": "ACTIVE",
        "retention_hours": 24,
        "created_ms": 1,
        "shards": [shard],
    }
    assert results.stream_from_wire(stream).shards[0].is_open
    answer = {"failed": 1, "results": [{"code": "THROTTLED", "message": "m"}]}
    (failure,) = results.put_records_from_wire(answer, 1).results
    assert isinstance(failure, results.RecordFailure)
    assert isinstance(failure.to_error(), errors.ThrottledError)
    with pytest.raises(errors.ProtocolError):
        results.put_records_from_wire({"failed": 0, "results": answer["results"]}, 1)
    with pytest.raises(errors.ProtocolError):
        results.raw_read_from_wire(
            {
                "batches": [],
                "start_offset": 5,
                "next_offset": 4,
                "high_watermark": 5,
                "millis_behind": 0,
            }
        )
