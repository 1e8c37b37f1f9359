"""The event-stream codec, checked against botocore's own decoder, and the SubscribeToShard stream.

The real check of the framing is botocore: what boto3's ``subscribe_to_shard`` would parse. The
subscription generator runs here against a fake shard source under trio's autojump clock, so the
5-second heartbeat, the 5-minute end and the takeover rules are tested in virtual time.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
import trio
from botocore.eventstream import EventStream, EventStreamBuffer  # type: ignore[import-untyped]
from botocore.exceptions import EventStreamError as BotocoreEventStreamError  # type: ignore[import-untyped]
from botocore.parsers import create_parser  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.frontends.kinesis import eventstream as es
from streamd.frontends.kinesis.codec import Protocol
from streamd.frontends.kinesis.fanout import (
    HEARTBEAT_S,
    SUBSCRIPTION_S_MAX,
    EventCodec,
    Subscriptions,
    open_subscription,
)
from streamd.frontends.kinesis.types import KinesisError
from streamd.shard import ChildShard, ReadResult
from streamd_client import batch as batchfmt
from streamd_client.errors import InvalidSequenceNumberError
from streamd_client.model import Position, hash_bytes_of, make_sequence

JSON = EventCodec(Protocol.JSON)
CBOR = EventCodec(Protocol.CBOR)


# -- the codec --------------------------------------------------------------------------------


def _botocore_messages(data: bytes) -> list[Any]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_a_message_decodes_with_botocores_parser() -> None:
    raw = es.encode_message(
        {":event-type": "SubscribeToShardEvent", ":message-type": "event"}, b'{"a":1}'
    )
    (message,) = _botocore_messages(raw)
    assert message.headers == {":event-type": "SubscribeToShardEvent", ":message-type": "event"}
    assert message.payload == b'{"a":1}'


def test_every_header_type_round_trips_through_botocore_and_our_decoder() -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers: dict[str, es.HeaderValue] = {
        "t": True,
        "f": False,
        "b": es.Int8(-7),
        "s": es.Int16(-300),
        "i": 70000,
        "l": es.Int64(2**40),
        "bytes": b"\x00\xff",
        "str": "h\u00e9llo",
        "ts": stamp,
        "uuid": ident,
    }
    raw = es.encode_message(headers, b"payload")
    (theirs,) = _botocore_messages(raw)
    assert theirs.headers == {
        "t": True,
        "f": False,
        "b": -7,
        "s": -300,
        "i": 70000,
        "l": 2**40,
        "bytes": b"\x00\xff",
        "str": "h\u00e9llo",
        "ts": int(stamp.timestamp() * 1000),  # botocore hands timestamps back as epoch ms
        "uuid": ident.bytes,
    }
    decoder = es.EventStreamDecoder()
    decoder.receive_data(raw)
    ours = decoder.next_message()
    assert ours is not None and ours.payload == b"payload"
    assert ours.headers == {
        "t": True,
        "f": False,
        "b": -7,
        "s": -300,
        "i": 70000,
        "l": 2**40,
        "bytes": b"\x00\xff",
        "str": "h\u00e9llo",
        "ts": stamp,
        "uuid": ident,
    }


def test_golden_bytes_of_an_empty_message() -> None:
    # 16 bytes: total 16, headers 0, prelude CRC, message CRC (zlib CRC32 of the 12 before it).
    assert es.encode_message({}, b"").hex() == "000000100000000005c248eb7d98c8ff"


def _messages() -> list[bytes]:
    return [
        JSON.initial_response(),
        es.event_message("SubscribeToShardEvent", b'{"Records":[]}', "application/x-amz-json-1.1"),
        es.exception_message("ResourceInUseException", b'{"message":"x"}', "application/json"),
        es.encode_message({"k": "v" * 1000}, bytes(range(256)) * 100),
    ]


def _decode_all(chunks: Iterator[bytes]) -> list[es.Message]:
    decoder = es.EventStreamDecoder()
    out: list[es.Message] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (message := decoder.next_message()) is not None:
            out.append(message)
    assert decoder.pending_bytes == 0
    return out


def test_decoder_whole_buffer_and_byte_by_byte_agree() -> None:
    stream = b"".join(_messages())
    whole = _decode_all(iter([stream]))
    single = _decode_all(stream[i : i + 1] for i in range(len(stream)))
    assert whole == single and len(whole) == 4
    assert whole[1].headers[":event-type"] == "SubscribeToShardEvent"
    assert whole[3].payload == bytes(range(256)) * 100


def test_any_corrupted_byte_is_detected() -> None:
    raw = bytearray(_messages()[1])
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        decoder = es.EventStreamDecoder()
        decoder.receive_data(bytes(bad))
        try:
            message = decoder.next_message()
        except es.EventStreamError:
            continue
        # A flip in the total length can only make the decoder wait for more bytes.
        assert message is None and i < 4


def test_a_broken_decoder_stays_broken() -> None:
    decoder = es.EventStreamDecoder()
    decoder.receive_data(b"\x00" * 12)
    with pytest.raises(es.EventStreamError, match="prelude CRC"):
        decoder.next_message()
    with pytest.raises(es.EventStreamError):
        decoder.receive_data(b"more")


def test_limits_are_enforced_on_both_sides() -> None:
    with pytest.raises(es.EventStreamError):
        es.encode_message({}, b"x" * (es.PAYLOAD_BYTES_MAX + 1))
    with pytest.raises(es.EventStreamError):
        es.encode_message({"x" * 256: "v"}, b"")
    with pytest.raises(es.EventStreamError):
        es.encode_message({"big": "v" * 70_000}, b"")
    with pytest.raises(es.EventStreamError):
        es.encode_message({"b": es.Int8(200)}, b"")
    prelude = (16 + es.PAYLOAD_BYTES_MAX + 1).to_bytes(4, "big") + bytes(4)
    decoder = es.EventStreamDecoder()
    decoder.receive_data(prelude + _crc(prelude))
    with pytest.raises(es.EventStreamError, match="payload length"):
        decoder.next_message()


def _crc(raw: bytes) -> bytes:
    import zlib

    return zlib.crc32(raw).to_bytes(4, "big")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_only_raise_our_error(data: bytes) -> None:
    decoder = es.EventStreamDecoder()
    decoder.receive_data(data)
    try:
        while decoder.next_message() is not None:
            pass
    except es.EventStreamError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_header_blocks_only_raise_our_error(raw: bytes) -> None:
    try:
        es.decode_headers(raw)
    except es.EventStreamError:
        pass


# -- SubscribeToShard events through botocore's Kinesis parser ---------------------------------


class _RawStream:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self) -> Iterator[bytes]:
        # Odd-sized chunks, as a socket would give (larger for large data: botocore's buffer
        # copies itself on every chunk).
        size = 7 if len(self._data) < 100_000 else 65_537
        for i in range(0, len(self._data), size):
            yield self._data[i : i + size]

    def close(self) -> None:
        pass


def _boto_event_stream(data: bytes) -> EventStream:
    model = botocore.session.get_session().get_service_model("kinesis")
    output = model.operation_model("SubscribeToShard").output_shape
    assert output is not None
    parser = create_parser("json")
    stream = EventStream(
        _RawStream(data), output.members["EventStream"], parser._event_stream_parser, "x"
    )
    initial = stream.get_initial_response()
    assert initial.headers[":event-type"] == "initial-response"
    return stream


def _batch(base_offset: int, datas: list[bytes], arrival_ms: int = 1_700_000_000_123) -> bytes:
    keys = [f"key-{base_offset + i}" for i in range(len(datas))]
    return batchfmt.encode_batch(
        keys,
        [hash_bytes_of(k) for k in keys],
        datas,
        base_offset=base_offset,
        first_arrival_ms=arrival_ms,
        last_arrival_ms=arrival_ms,
    )


def _result(batches: list[bytes], start: int, next_offset: int, **extra: Any) -> ReadResult:
    return ReadResult(
        batches, start, next_offset, max(next_offset, extra.pop("hwm", 0)), 0, **extra
    )


def test_records_and_shard_end_parse_as_boto3_sees_them() -> None:
    from streamd.frontends.kinesis.fanout import render_events

    # The stored batch starts before the position asked for: offsets 3 and 4 are skipped.
    result = _result([_batch(3, [b"a", b"b", b"c", b"d"])], start=5, next_offset=7)
    events, at_end = render_events(result, 2, JSON)
    assert not at_end and len(events) == 1
    child = ChildShard("shardId-000000000004", ("shardId-000000000002",), 0, 2**127)
    end = _result([], 7, 7, shard_end=True, child_shards=(child,))
    end_events, at_end = render_events(end, 2, JSON)
    assert at_end
    parsed = list(_boto_event_stream(JSON.initial_response() + events[0] + end_events[0]))
    first = parsed[0]["SubscribeToShardEvent"]
    assert [r["Data"] for r in first["Records"]] == [b"c", b"d"]
    assert [r["PartitionKey"] for r in first["Records"]] == ["key-5", "key-6"]
    assert first["Records"][0]["SequenceNumber"] == make_sequence(2, 5)
    assert first["Records"][0]["ApproximateArrivalTimestamp"] == datetime(
        2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC
    )
    assert first["ContinuationSequenceNumber"] == make_sequence(2, 6)
    last = parsed[1]["SubscribeToShardEvent"]
    assert last["Records"] == [] and "ContinuationSequenceNumber" not in last
    assert last["ChildShards"] == [
        {
            "ShardId": "shardId-000000000004",
            "ParentShards": ["shardId-000000000002"],
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(2**127)},
        }
    ]


def test_a_large_read_is_split_into_bounded_events() -> None:
    from streamd.frontends.kinesis.fanout import EVENT_DATA_BYTES_MAX, render_events

    datas = [bytes(100_000)] * 50  # 5 MB of data in one read
    events, _ = render_events(_result([_batch(0, datas)], 0, 50), 0, JSON)
    assert len(events) == 3
    parsed = [
        e["SubscribeToShardEvent"]
        for e in _boto_event_stream(JSON.initial_response() + b"".join(events))
    ]
    counts = [len(p["Records"]) for p in parsed]
    assert sum(counts) == 50 and max(counts) * 100_000 <= EVENT_DATA_BYTES_MAX
    # Each event's continuation is its own last record: resuming AFTER it loses nothing.
    ends = [p["ContinuationSequenceNumber"] for p in parsed]
    assert ends == [make_sequence(0, n - 1) for n in (counts[0], counts[0] + counts[1], 50)]


def test_each_event_of_a_split_read_carries_its_own_millis_behind() -> None:
    from streamd.frontends.kinesis.fanout import render_events

    # Two batches a second apart, 1.5 MB each: one read, two events (2 MiB per event at most).
    older, newer = 1_700_000_000_000, 1_700_000_001_000
    batches = [_batch(0, [bytes(1_500_000)], older), _batch(1, [bytes(1_500_000)], newer)]
    result = ReadResult(batches, 0, 2, 2, 0, tip_arrival_ms=newer)
    events, _ = render_events(result, 0, JSON)
    parsed = [
        e["SubscribeToShardEvent"]
        for e in _boto_event_stream(JSON.initial_response() + b"".join(events))
    ]
    assert [len(p["Records"]) for p in parsed] == [1, 1]
    assert [p["MillisBehindLatest"] for p in parsed] == [1000, 0]
    # A read short of the tip: its last event is as far behind as its last record.
    short = ReadResult(batches[:1], 0, 1, 2, 1000, tip_arrival_ms=newer)
    (event,), _ = render_events(short, 0, JSON)
    (doc,) = _boto_event_stream(JSON.initial_response() + event)
    assert doc["SubscribeToShardEvent"]["MillisBehindLatest"] == 1000


def test_an_exception_event_raises_in_boto3_with_its_code() -> None:
    data = JSON.initial_response() + JSON.exception("ResourceInUseException", "taken over")
    with pytest.raises(BotocoreEventStreamError) as caught:
        list(_boto_event_stream(data))
    assert caught.value.response["Error"] == {
        "Code": "ResourceInUseException",
        "Message": "taken over",
    }


def test_cbor_events_carry_byte_strings_and_the_cbor_content_type() -> None:
    from streamd.frontends.kinesis import cbor
    from streamd.frontends.kinesis.fanout import render_events

    events, _ = render_events(_result([_batch(0, [b"\x00\x01"])], 0, 1), 0, CBOR)
    decoder = es.EventStreamDecoder()
    decoder.receive_data(events[0])
    message = decoder.next_message()
    assert message is not None
    assert message.headers[":content-type"] == "application/x-amz-cbor-1.1"
    doc = cbor.loads(message.payload)
    assert doc["Records"][0]["Data"] == b"\x00\x01"


# -- the subscription generator in virtual time ------------------------------------------------


class _FakeShard:
    """A shard source: a list of records and a long-poll that wakes when one is appended."""

    def __init__(self) -> None:
        self.datas: list[bytes] = []
        self.changed = trio.Event()
        self.reads = 0
        self.ending_offset: int | None = None

    def append(self, data: bytes) -> None:
        self.datas.append(data)
        self.changed.set()
        self.changed = trio.Event()

    async def read(
        self, name: str, shard_id: str, position: Position, max_bytes: int, wait_ms: int
    ) -> ReadResult:
        self.reads += 1
        if position.kind == "latest":
            offset = len(self.datas)
        elif position.kind == "at_offset":
            assert position.offset is not None
            offset = position.offset
        elif position.kind == "at_sequence" and position.sequence == "bad":
            raise InvalidSequenceNumberError("bad")
        else:
            offset = 0
        if offset >= len(self.datas) and wait_ms > 0 and self.ending_offset is None:
            with trio.move_on_after(wait_ms / 1000):
                await self.changed.wait()
        batches = [_batch(offset, self.datas[offset:])] if offset < len(self.datas) else []
        end = len(self.datas)
        return ReadResult(batches, offset, end, end, 0, shard_end=self.ending_offset == end)


async def _subscribe(
    subs: Subscriptions, shard: _FakeShard, position: Position | None = None
) -> AsyncIterator[bytes]:
    return await open_subscription(
        subs,
        shard,
        "s",
        "shardId-000000000000",
        "arn:c",
        position or Position.trim_horizon(),
        JSON,
    )


def _docs(message: bytes) -> tuple[str, dict[str, Any]]:
    import json

    decoder = es.EventStreamDecoder()
    decoder.receive_data(message)
    decoded = decoder.next_message()
    assert decoded is not None
    kind = decoded.headers.get(":event-type") or decoded.headers[":exception-type"]
    assert isinstance(kind, str)
    return kind, json.loads(decoded.payload)


async def test_heartbeats_every_5_s_and_the_end_after_5_minutes(autojump_clock: Any) -> None:
    shard = _FakeShard()
    subs = Subscriptions()
    events = await _subscribe(subs, shard, Position.latest())
    started = trio.current_time()
    times: list[float] = []
    kinds: list[str] = []
    async for message in events:
        kinds.append(_docs(message)[0])
        times.append(trio.current_time() - started)
    assert kinds[0] == "initial-response"
    assert set(kinds[1:]) == {"SubscribeToShardEvent"}
    assert times[1] == 0  # the first event goes out at once
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(abs(g - HEARTBEAT_S) < 0.01 for g in gaps)
    assert abs(times[-1] - SUBSCRIPTION_S_MAX) < 0.01
    assert len(subs) == 0


async def test_records_are_pushed_as_they_commit(autojump_clock: Any) -> None:
    shard = _FakeShard()
    shard.append(b"old")
    events = await _subscribe(Subscriptions(), shard, Position.latest())
    got: list[str] = []
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for i in range(3):
                await trio.sleep(1)
                shard.append(f"r{i}".encode())

        nursery.start_soon(produce)
        async for message in events:
            _, doc = _docs(message)
            for record in doc.get("Records", []):
                got.append(record["PartitionKey"])
            if len(got) == 3:
                break
        await events.aclose()  # type: ignore[attr-defined]
    assert got == ["key-1", "key-2", "key-3"]


async def test_shard_end_closes_the_stream(autojump_clock: Any) -> None:
    shard = _FakeShard()
    shard.append(b"x")
    shard.ending_offset = 1
    kinds = [_docs(m) for m in [m async for m in await _subscribe(Subscriptions(), shard)]]
    assert [k for k, _ in kinds] == ["initial-response", "SubscribeToShardEvent"]
    assert kinds[1][1]["ChildShards"] == [] and "ContinuationSequenceNumber" not in kinds[1][1]


async def test_a_second_subscription_within_5_s_is_refused_then_takes_over(
    autojump_clock: Any,
) -> None:
    shard = _FakeShard()
    subs = Subscriptions()
    first = await _subscribe(subs, shard)
    assert _docs(await first.__anext__())[0] == "initial-response"
    with pytest.raises(KinesisError) as caught:
        await _subscribe(subs, shard)
    assert caught.value.type_name == "ResourceInUseException"
    await trio.sleep(HEARTBEAT_S + 1)
    second = await _subscribe(subs, shard)
    kinds = [_docs(m) async for m in first]
    assert kinds[-1] == ("ResourceInUseException", {"message": kinds[-1][1]["message"]})
    assert len(subs) == 1  # the first let go of nothing but its own slot
    await second.aclose()  # type: ignore[attr-defined]
    assert len(subs) == 0


async def test_a_bad_position_is_an_error_before_any_event_and_frees_the_slot() -> None:
    subs = Subscriptions()
    with pytest.raises(KinesisError) as caught:
        await _subscribe(subs, _FakeShard(), Position("at_sequence", sequence="bad"))
    assert caught.value.type_name == "InvalidArgumentException"
    assert len(subs) == 0


async def test_a_corrupt_stored_batch_ends_the_stream_with_an_exception_event() -> None:
    class _CorruptShard(_FakeShard):
        async def read(
            self, name: str, shard_id: str, position: Position, max_bytes: int, wait_ms: int
        ) -> ReadResult:
            good = _batch(0, [b"x"])
            head = batchfmt.HEADER_BYTES
            bad = good[:head] + bytes(len(good) - head)  # a payload that does not decompress
            return ReadResult([bad], 0, 1, 1, 0)

    events = await _subscribe(Subscriptions(), _CorruptShard())
    kinds = [_docs(m)[0] async for m in events]
    assert kinds == ["initial-response", "InternalFailureException"]
