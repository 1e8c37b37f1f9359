"""The replication wire codec: every message round-trips, batches cross as their stored bytes,
and any other input is refused with MalformedMessage only (hypothesis fuzz, CBOR included)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.replication import messages as m
from streamd.replication.codec import Envelope, decode_envelope, encode_envelope
from streamd.replication.errors import MalformedMessage
from streamd.storage.config import LogConfig
from streamd.storage.filestore import FileLogStore, encode_stored
from streamd.storage.logstore import StoredBatch, make_batch
from streamd_client import strict_cbor

ints = st.integers(0, 2**63 - 1)
small = st.integers(0, 1_000)
ids = st.integers(0, 2**63 - 1)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@st.composite
def runs(draw: st.DrawFn, start: int, epoch_min: int, epoch_max: int) -> tuple[StoredBatch, ...]:
    out: list[StoredBatch] = []
    offset, epoch = start, epoch_min
    for _ in range(draw(st.integers(0, 4))):
        epoch = draw(st.integers(epoch, epoch_max))
        batch = make_batch(
            offset,
            draw(st.integers(1, 50)),
            epoch,
            draw(st.binary(max_size=64)),
            producer_id=draw(st.integers(0, 2**63 - 1)),
            producer_seq=draw(st.integers(0, 2**31 - 1)),
            control=draw(st.booleans()),
        )
        out.append(batch)
        offset = batch.next_offset
    return tuple(out)


@st.composite
def messages(draw: st.DrawFn) -> m.Message:
    src, dst, epoch = draw(ids), draw(ids), draw(st.integers(0, 100))
    kind = draw(st.sampled_from(range(8)))
    if kind == 0:
        return m.Fence(src, dst, epoch)
    if kind == 1:
        return m.FenceAck(src, dst, epoch, draw(ints), draw(ints), draw(st.booleans()))
    if kind == 2:
        prev, prev_epoch = draw(small), draw(st.integers(0, epoch))
        batches = draw(runs(prev, prev_epoch, epoch))
        return m.Append(src, dst, epoch, prev, prev_epoch, batches, draw(ints), draw(ints))
    if kind == 3:
        return m.AppendAck(src, dst, epoch, draw(ints), draw(ints), draw(ints))
    if kind == 4:
        return m.AppendNack(src, dst, epoch, draw(ints), draw(ints), draw(ints))
    if kind == 5:
        return m.Fetch(src, dst, epoch, draw(ints), draw(ints))
    if kind == 6:
        start = draw(small)
        if draw(st.booleans()):
            return m.FetchReply(src, dst, epoch, start, (), draw(ints), draw(ints), draw(ints))
        batches = draw(runs(start, 0, epoch))
        return m.FetchReply(src, dst, epoch, start, batches, draw(ints), None, draw(ints))
    return m.Stale(src, dst, epoch)


@settings(max_examples=400)
@given(names, names, messages())
def test_every_message_round_trips_through_cbor(stream: str, shard: str, msg: m.Message) -> None:
    envelope = Envelope(stream, shard, msg)
    value = encode_envelope(envelope)
    wire = strict_cbor.loads(cbor2.dumps(value), items_max=1 << 20, depth_max=8)
    assert decode_envelope(wire) == envelope


def test_batches_cross_as_the_bytes_the_file_log_holds(tmp_path: Any) -> None:
    store = FileLogStore(tmp_path, LogConfig())
    batches = [make_batch(0, 3, 1, b"abc", producer_id=7, producer_seq=2), make_batch(3, 1, 2, b"")]
    store.append(batches)
    store.sync()
    on_disk = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("*.log")))
    read = store.read(0, 10)
    value = encode_envelope(Envelope("s", "shard-0", m.Append(1, 2, 2, 0, 0, tuple(read), 0, 4)))
    assert b"".join(value["b"]) == on_disk
    assert decode_envelope(value).message.batches == tuple(batches)  # type: ignore[union-attr]
    store.close()


def _append_value(batches: list[bytes], prev: int = 0, prev_epoch: int = 0) -> dict[str, Any]:
    return {"s": "s", "h": "h", "k": "append", "f": 1, "t": 2, "e": 3, "p": prev,
            "q": prev_epoch, "b": batches, "hw": 0, "le": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ([], "not a map"),
        ({"k": "nope"}, "unknown kind"),
        ({"s": "s", "h": "h", "k": "fence", "f": -1, "t": 0, "e": 0}, "negative id"),
        ({"s": "s", "h": "h", "k": "fence", "f": True, "t": 0, "e": 0}, "bool as int"),
        ({"s": "s", "h": "h", "k": "fence", "f": 2**64, "t": 0, "e": 0}, "bignum"),
        ({"s": "", "h": "h", "k": "fence", "f": 0, "t": 0, "e": 0}, "empty stream"),
        (
            {"s": "s", "h": "h", "k": "fence_ack", "f": 0, "t": 0, "e": 0, "n": 0, "l": 0, "w": 1},
            "int as bool",
        ),
        (_append_value([encode_stored(make_batch(5, 1, 1, b"x"))]), "gap after prev"),
        (_append_value([encode_stored(make_batch(0, 1, 4, b"x"))]), "batch epoch > message"),
        (_append_value([encode_stored(make_batch(0, 1, 1, b"x"))], 0, 2), "epoch goes back"),
        (_append_value([encode_stored(make_batch(0, 1, 1, b"x")) + b"\0"]), "trailing bytes"),
        (_append_value([b"\0" * 70]), "not a batch"),
        (_append_value(["text"]), "batch not bytes"),  # type: ignore[list-item]
    ],
)
def test_malformed_envelopes_are_refused(value: Any, why: str) -> None:
    with pytest.raises(MalformedMessage):
        decode_envelope(value)


def test_a_flipped_bit_in_a_batch_is_refused() -> None:
    data = bytearray(encode_stored(make_batch(0, 2, 1, b"payload")))
    for position in (10, 70):  # one in the header, one in the payload
        flipped = bytearray(data)
        flipped[position] ^= 0x10
        with pytest.raises(MalformedMessage):
            decode_envelope(_append_value([bytes(flipped)]))


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=80)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from([*"skfthepqbnldwgo", "hw", "le", "se", "da", "de"]),
                      inner, max_size=12),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=600)
@given(cbor_values)
def test_any_value_decodes_or_is_refused_with_malformed_message(value: Any) -> None:
    try:
        decode_envelope(value)
    except MalformedMessage:
        pass


@settings(max_examples=300)
@given(messages(), st.data())
def test_mutated_envelopes_decode_or_are_refused(msg: m.Message, data: st.DataObject) -> None:
    value = encode_envelope(Envelope("s", "h", msg))
    if data.draw(st.booleans()):
        value[data.draw(st.sampled_from(sorted(value)))] = data.draw(cbor_values)
    elif isinstance(value.get("b"), list) and value["b"]:
        raw = bytearray(data.draw(st.sampled_from(value["b"])))
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        value["b"] = [bytes(raw)]
    try:
        decode_envelope(value)
    except MalformedMessage:
        pass
