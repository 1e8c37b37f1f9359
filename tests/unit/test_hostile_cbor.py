"""Hostile CBOR into every decoder: shared references (tags 28/29), other tags, indefinite
lengths, trailing bytes, bodies of many tiny items, and structured fuzz. Each decoder only ever
raises its own error (frames: ProtocolError; stored batches: CorruptDataError; the gateway's
bodies: CborError/CodecError), at once, and error messages stay short whatever the input."""

from __future__ import annotations

import json
import struct
import time

import cbor2
import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamd.frontends.kinesis import cbor as kinesis_cbor
from streamd.frontends.kinesis.codec import CodecError, Protocol, decode_request
from streamd_client import batch, strict_cbor, wire
from streamd_client.errors import CorruptDataError, ProtocolError
from streamd_client.summary import summary


def shared_reference_dag(levels: int) -> bytes:
    """CBOR of ``levels`` nested shareables, each an array of the previous level twice: once
    inline, once as a reference (tag 29) to it. 7 bytes a level; cbor2 decodes it in linear
    time to a DAG with 2**levels paths, whose ``repr`` (or any walk) takes exponential time."""
    out = b"\xd8\x1c\x62v1"  # the innermost shareable: "v1"
    for level in range(levels, 0, -1):  # shareables are numbered outermost first
        out = b"\xd8\x1c\x82" + out + cbor2.dumps(cbor2.CBORTag(29, level))
    return out


def hello_bomb_frame(levels: int = 33) -> bytes:
    """The issue's pre-handshake frame: a hello whose versions are a shared-reference DAG."""
    body = b"\xa3\x61i\x01\x62op\x65hello\x61a\xa1\x68versions" + shared_reference_dag(levels)
    return struct.pack(">I", len(body)) + body


def test_the_issue_frame_is_242_bytes_and_a_real_bomb_for_plain_cbor2() -> None:
    frame = hello_bomb_frame()
    assert len(frame) == 242
    dag = cbor2.loads(frame[4:])["a"]["versions"]  # what main decoded: a DAG ...
    for _ in range(33):
        assert dag[0] is dag[1]  # ... whose two halves are one object, 33 levels deep
        dag = dag[0]
    assert dag == "v1"


@pytest.mark.parametrize("levels", [1, 5, 33, 200])
def test_shared_references_are_refused_at_once_by_the_frame_decoder(levels: int) -> None:
    decoder = wire.FrameDecoder()
    decoder.receive_data(hello_bomb_frame(levels))
    started = time.perf_counter()
    with pytest.raises(ProtocolError) as caught:
        decoder.next_message()
    assert time.perf_counter() - started < 1.0  # generous: main never ends at 33 levels
    assert caught.value.code == "PROTOCOL_ERROR" and len(caught.value.message) < 300


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xd8\x1c\x80", id="tag 28"),
        pytest.param(b"\x82\xd8\x1c\x61a\xd8\x1d\x00", id="tag 29"),
        pytest.param(b"\xd9\x01\x00\x80", id="tag 256 string refs"),
        pytest.param(b"\xd8\x19\x00", id="tag 25"),
        pytest.param(b"\xc1\x01", id="tag 1 datetime"),
        pytest.param(b"\xd8\x1e\x82\x01\x02", id="tag 30 rational"),
        pytest.param(b"\xc3\x41\x01", id="tag 3 negative bignum"),
        pytest.param(b"\xc2\x59\x10\x01" + b"\x01" * 4097, id="bignum over 4 KiB"),
        pytest.param(b"\xda\x00\x01\x00\x00\x01", id="tag 65536"),
        pytest.param(b"\xdb" + b"\xff" * 8 + b"\x01", id="tag 2**64-1"),
        pytest.param(b"\x9f\x01\xff", id="indefinite array"),
        pytest.param(b"\x5f\x41a\xff", id="indefinite bytes"),
        pytest.param(b"\xa1\x01\x02", id="integer map key"),
        pytest.param(b"\x01\x02", id="trailing item"),
        pytest.param(b"\xf6\x00", id="trailing byte"),
        pytest.param(b"\x63\xed\xa0\x80", id="lone surrogate in text"),
        pytest.param(b"\x81" * 20 + b"\x01", id="too deep"),
    ],
)
def test_strict_decoder_refuses(payload: bytes) -> None:
    for items_max in (1, 1 << 16):  # the head walk (long bodies) and cbor2 alone (short ones)
        with pytest.raises(strict_cbor.StrictCborError):
            strict_cbor.loads(payload, items_max=items_max, depth_max=16)


def test_strict_decoder_takes_what_the_protocol_sends() -> None:
    message = {
        "i": 2**64 - 1,
        "op": "put_records",
        "a": {"records": [{"k": "ключ", "d": b"\x00" * 10, "h": 2**128 - 1}], "x": [1.5, None]},
        "b": [True, False, -(2**64), 0],
    }
    body = cbor2.dumps(message)
    for items_max in (1 << 16, 1):
        if items_max == 1:
            with pytest.raises(strict_cbor.StrictCborError):
                strict_cbor.loads(body, items_max=items_max, depth_max=16)
        else:
            assert strict_cbor.loads(body, items_max=items_max, depth_max=16) == message
    assert strict_cbor.count_items(body, 1 << 16, 16) == 27  # the bignum's tag counts


def test_a_frame_of_nulls_or_empty_maps_cannot_decode_to_many_times_its_size() -> None:
    for item in (b"\xf6", b"\xa0", b"\x80"):
        count = 200_000
        body = b"\xa2\x61i\x01\x61a\x9a" + struct.pack(">I", count) + item * count
        decoder = wire.FrameDecoder()
        decoder.receive_data(struct.pack(">I", len(body)) + body)
        with pytest.raises(ProtocolError, match="items"):
            decoder.next_message()


def test_a_trailing_byte_after_the_message_is_a_protocol_error() -> None:
    body = cbor2.dumps({"i": 1, "op": "list_streams", "a": {}}) + b"\x00"
    decoder = wire.FrameDecoder()
    decoder.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match="after the CBOR item"):
        decoder.next_message()


def test_summary_is_bounded_for_huge_deep_and_shared_values() -> None:
    dag: list[object] = []
    for _ in range(60):
        dag = [dag, dag]
    assert summary(dag) == "a list of 2 items"
    assert summary("x" * 10_000_000).endswith("(10000000 characters)")
    assert summary(10**5000) == "an integer of 16610 bits"  # str() of it raises ValueError
    assert summary(b"\x00" * 100) == "100 bytes"
    assert summary({"a": 1}) == "a map of 1 entries"
    assert summary("\ud800") == "'\\ud800'"


# -- structured fuzz: every decoder, CBOR-shaped garbage ---------------------------------------

_tokens = st.sampled_from(
    [
        b"\xd8\x1c", b"\xd8\x1d\x00", b"\xd8\x1d\x01", b"\xc2\x41\x01", b"\xc1", b"\xd9\x01\x00",
        b"\xd8\x19\x00", b"\x82", b"\x83", b"\x9f", b"\xbf", b"\xff", b"\xa1", b"\xa2", b"\x80",
        b"\xa0", b"\x61a", b"\x62op", b"\x61i", b"\x01", b"\x1b" + b"\xff" * 8,
        b"\x3b" + b"\x7f" * 8, b"\xf6", b"\xf7", b"\xf9\x3c\x00", b"\xfb" + b"\x00" * 8,
        b"\x5f", b"\x7f", b"\x43abc",
        b"\x63\xed\xa0\x80", b"\x9a\xff\xff\xff\xff", b"\xf8\x20", b"\x1c",
    ]
)  # fmt: skip
cbor_ish = st.lists(_tokens | st.binary(max_size=3), max_size=40).map(b"".join)
_fuzz = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(cbor_ish, st.integers(1, 64))
def test_fuzz_strict_decoder_raises_only_its_error(body: bytes, items_max: int) -> None:
    try:
        strict_cbor.loads(body, items_max=items_max, depth_max=8)
    except strict_cbor.StrictCborError:
        pass


@_fuzz
@given(cbor_ish)
def test_fuzz_frame_decoder_raises_only_protocol_error(body: bytes) -> None:
    decoder = wire.FrameDecoder(items_max=32)
    decoder.receive_data(struct.pack(">I", len(body)) + body)
    try:
        decoder.next_message()
    except ProtocolError:
        pass


def _batch_around(payload: bytes, record_count: int) -> bytes:
    """A batch with right CRCs around any payload, so the decoder reaches the CBOR."""
    header = bytearray(
        struct.pack(
            ">HBBIQIIQQQIIII",
            batch.MAGIC, 1, batch.CODEC_NONE, 64 + len(payload), 0, record_count, 0, 0, 0, 0,
            0, len(payload), crc32c.crc32c(payload), 0,
        )
    )  # fmt: skip
    struct.pack_into(">I", header, 60, crc32c.crc32c(bytes(header[:60])))
    return bytes(header) + payload


@_fuzz
@given(cbor_ish, st.integers(1, 3))
def test_fuzz_batch_decoder_raises_only_corrupt_data(payload: bytes, record_count: int) -> None:
    blob = _batch_around(b"\x83" + payload, record_count)
    try:
        header = batch.parse_header(blob)
        batch.decode_records(blob, header)
    except CorruptDataError:
        pass


def test_batch_decoder_refuses_tags_and_lying_columns() -> None:
    good = cbor2.dumps([["k"], [b"\x00" * 16], [b"d"]])
    assert batch.decode_records(_batch_around(good, 1), batch.parse_header(_batch_around(good, 1)))
    shared = b"\x83\x81\xd8\x1c\x61k\x81\x50" + b"\x00" * 16 + b"\x81\xd8\x1d\x00"
    nulls = b"\x83\x81\x61k\x9a\x00\x10\x00\x00" + b"\xf6" * 0x100000 + b"\x81\x41d"
    trailing = good + b"\x00"
    for payload in (shared, nulls, trailing):
        blob = _batch_around(payload, 1)
        with pytest.raises(CorruptDataError):
            batch.decode_records(blob, batch.parse_header(blob))


@_fuzz
@given(cbor_ish)
def test_fuzz_gateway_cbor_raises_only_its_errors(body: bytes) -> None:
    try:
        kinesis_cbor.loads(body)
    except kinesis_cbor.CborError:
        pass
    try:
        decode_request(Protocol.CBOR, body)
    except CodecError:
        pass


def test_gateway_cbor_refuses_shared_references_and_many_items() -> None:
    with pytest.raises(kinesis_cbor.CborError, match="tag 28"):
        kinesis_cbor.loads(shared_reference_dag(40))
    many = b"\x9a" + struct.pack(">I", 100_000) + b"\xa0" * 100_000
    with pytest.raises(kinesis_cbor.CborError, match="items"):
        kinesis_cbor.loads(many)


def test_gateway_json_bodies_of_many_tiny_values_are_refused_before_parsing() -> None:
    many = b"[" + b"{}," * 300_000 + b"{}]"  # 900 kB that json.loads makes ~20 MiB of dicts
    with pytest.raises(CodecError, match="JSON values"):
        decode_request(Protocol.JSON, b'{"Records": ' + many + b"}")
    entry = json.dumps({"PartitionKey": ",{[" * 85, "Data": "eA=="})
    body = b'{"StreamName": "s", "Records": [' + ",".join([entry] * 500).encode() + b"]}"
    assert len(decode_request(Protocol.JSON, body)["Records"]) == 500  # odd keys still pass
