"""The frame codec (wire.py): round trips whole and byte by byte, garbage, limits, golden bytes.

As for h11: any input is decoded or rejected with ProtocolError; nothing else escapes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamd_client import wire
from streamd_client.errors import ProtocolError

# The integers the protocol carries: CBOR's own (-2**64..2**64-1) and positive bignums up to 128
# bits (explicit hash keys); larger ones and negative bignums are tags it refuses.
_ints = st.integers(min_value=-(2**64), max_value=2**128 - 1)
_leaves = st.none() | st.booleans() | _ints | st.text(max_size=20) | st.binary(max_size=40)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
messages = st.builds(
    lambda request_id, body: {"i": request_id, **body},
    st.integers(min_value=0, max_value=2**64 - 1),
    st.dictionaries(st.sampled_from(["op", "a", "r", "e", "x"]), _values, max_size=3),
)


def _drain(decoder: wire.FrameDecoder) -> list[dict[str, Any]]:
    out = []
    while isinstance(message := decoder.next_message(), dict):
        out.append(message)
    return out


# Generation of nested messages can be slow on a loaded CI machine; that is not a failure.
_slow_ok = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@_slow_ok
@given(st.lists(messages, min_size=1, max_size=5))
def test_frames_round_trip_from_the_whole_buffer(batch: list[dict[str, Any]]) -> None:
    decoder = wire.FrameDecoder()
    decoder.receive_data(b"".join(wire.encode_message(m) for m in batch))
    assert _drain(decoder) == batch
    assert decoder.buffered_bytes == 0


@_slow_ok
@given(st.lists(messages, min_size=1, max_size=3))
def test_frames_round_trip_one_byte_at_a_time(batch: list[dict[str, Any]]) -> None:
    decoder = wire.FrameDecoder()
    decoded = []
    for byte in b"".join(wire.encode_message(m) for m in batch):
        decoder.receive_data(bytes([byte]))
        decoded.extend(_drain(decoder))
    assert decoded == batch


@_slow_ok
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_frames_round_trip_split_anywhere(batch: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(wire.encode_message(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = wire.FrameDecoder()
    decoded = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.receive_data(stream[start:end])
        decoded.extend(_drain(decoder))
    assert decoded == batch


@settings(max_examples=500)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_garbage_only_ever_raises_protocol_error(garbage: bytes, chunk_bytes: int) -> None:
    decoder = wire.FrameDecoder(frame_bytes_max=1024)
    try:
        for at in range(0, len(garbage), chunk_bytes):
            decoder.receive_data(garbage[at : at + chunk_bytes])
            _drain(decoder)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=200))
def test_any_frame_body_decodes_or_raises_protocol_error(body: bytes) -> None:
    decoder = wire.FrameDecoder()
    decoder.receive_data(len(body).to_bytes(4, "big") + body)
    try:
        message = decoder.next_message()
    except ProtocolError:
        return
    assert isinstance(message, dict) and isinstance(message["i"], int)


def test_zero_and_oversized_lengths_are_refused_before_the_body_arrives() -> None:
    for header in (b"\x00\x00\x00\x00", (1025).to_bytes(4, "big")):
        decoder = wire.FrameDecoder(frame_bytes_max=1024)
        decoder.receive_data(header)
        with pytest.raises(ProtocolError):
            decoder.next_message()


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    frame = wire.encode_message({"i": 1, "d": b"x" * 1000})
    decoder = wire.FrameDecoder(frame_bytes_max=len(frame) - 4)
    decoder.receive_data(frame)
    assert decoder.next_message() == {"i": 1, "d": b"x" * 1000}


@pytest.mark.parametrize("message", [[1, 2], {"op": "hello"}, {"i": "1"}, {"i": 1.5}, 7])
def test_messages_must_be_maps_with_an_integer_id(message: Any) -> None:
    import cbor2

    body = cbor2.dumps(message)
    decoder = wire.FrameDecoder()
    decoder.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_incomplete_frames_need_data() -> None:
    frame = wire.encode_message({"i": 3})
    decoder = wire.FrameDecoder()
    assert decoder.next_message() is wire.NEED_DATA
    decoder.receive_data(frame[:-1])
    assert decoder.next_message() is wire.NEED_DATA
    decoder.receive_data(frame[-1:])
    assert decoder.next_message() == {"i": 3}


def test_check_request_splits_and_validates() -> None:
    assert wire.check_request(wire.request(5, "read", {"x": 1})) == (5, "read", {"x": 1})
    assert wire.check_request({"i": 5, "op": "list_streams"}) == (5, "list_streams", {})
    with pytest.raises(ProtocolError):
        wire.check_request({"i": 5, "a": {}})
    with pytest.raises(ProtocolError):
        wire.check_request({"i": 5, "op": "x", "a": [1]})


def test_golden_hello_frame() -> None:
    frame = wire.encode_message(
        wire.request(1, wire.OP_HELLO, {"versions": [1], "client": "streamd-client/0.1"})
    )
    assert frame.hex() == (
        "00000035"  # length 53, big-endian
        "a3"  # map(3)
        "6169"
        "01"  # "i": 1
        "626f70"
        "6568656c6c6f"  # "op": "hello"
        "6161"
        "a2"  # "a": map(2)
        "6876657273696f6e73"
        "8101"  # "versions": [1]
        "66636c69656e74"
        "7273747265616d642d636c69656e742f302e31"  # "client": "streamd-client/0.1"
    )
