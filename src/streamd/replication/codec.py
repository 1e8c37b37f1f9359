"""Replication messages to and from CBOR-friendly values, sans I/O (no trio, no sockets).

An ``Envelope`` is one message of messages.py plus the shard it belongs to (``stream``,
``shard_id``); the message itself names sender and receiver replica ids (``src``, ``dst``). On
the wire (inside the native op ``replica_messages``, see transport.py) an envelope is a map with
short keys:

    "s" stream (text)   "h" shard id (text)   "k" kind (text, below)   "f" src   "t" dst
    "e" epoch, then the kind's own fields:
    fence       -
    fence_ack   "n" log_end, "l" last_epoch, "w" whole (bool)
    append      "p" prev_offset, "q" prev_epoch, "b" batches, "hw" hw, "le" leader_end
    append_ack  "n" log_end, "d" durable_end, "g" generation
    append_nack "n" log_end, "l" last_epoch, "g" generation
    fetch       "o" from_offset, "l" last_epoch
    fetch_reply "o" from_offset, "b" batches, "se" source_end, "da" diverge_at (int or null),
                "de" diverge_epoch
    stale       -

Batches travel as their stored bytes (``filestore.encode_stored``: the on-disk format of
docs/storage-format.md, byte for byte what the file log holds) and are decoded with
``decode_stored``, which verifies the header and payload CRCs, so a batch damaged in flight is
refused here, before any replica sees it.

Decoding trusts nothing: every field is checked for type and range (integers are 0..2**63-1,
bools are bools), batches of one message must follow each other from the offset the message
names (``prev_offset`` / ``from_offset``) with epochs that never go back and never pass the
message's epoch. Those are the shapes the replica asserts on (``ReplicationBroken``); a peer's
bytes must never reach an assertion. ``MalformedMessage`` is the only exception that escapes
``decode_envelope`` for any input (a fuzz test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from streamd_client.errors import CorruptDataError

from ..storage.filestore import decode_stored, encode_stored
from ..storage.logstore import StoredBatch
from . import messages as m
from .errors import MalformedMessage

INT_MAX: Final = 2**63 - 1
NAME_CHARS_MAX: Final = 256  # stream names are <= 128, shard ids shorter
BATCHES_PER_MESSAGE_MAX: Final = 1024  # far above ReplicaConfig.batches_per_message_max


@dataclass(frozen=True, slots=True)
class Envelope:
    """One replication message of one shard's replica set."""

    stream: str
    shard_id: str
    message: m.Message


# -- encoding ---------------------------------------------------------------------------------


def _batches(batches: Sequence[StoredBatch]) -> list[bytes]:
    return [encode_stored(batch) for batch in batches]


def _fields(message: m.Message) -> tuple[str, dict[str, Any]]:
    if isinstance(message, m.Fence):
        return "fence", {}
    if isinstance(message, m.FenceAck):
        return "fence_ack", {"n": message.log_end, "l": message.last_epoch, "w": message.whole}
    if isinstance(message, m.Append):
        return "append", {
            "p": message.prev_offset,
            "q": message.prev_epoch,
            "b": _batches(message.batches),
            "hw": message.hw,
            "le": message.leader_end,
        }
    if isinstance(message, m.AppendAck):
        return "append_ack", {
            "n": message.log_end,
            "d": message.durable_end,
            "g": message.generation,
        }
    if isinstance(message, m.AppendNack):
        return "append_nack", {
            "n": message.log_end,
            "l": message.last_epoch,
            "g": message.generation,
        }
    if isinstance(message, m.Fetch):
        return "fetch", {"o": message.from_offset, "l": message.last_epoch}
    if isinstance(message, m.FetchReply):
        return "fetch_reply", {
            "o": message.from_offset,
            "b": _batches(message.batches),
            "se": message.source_end,
            "da": message.diverge_at,
            "de": message.diverge_epoch,
        }
    assert isinstance(message, m.Stale)
    return "stale", {}


def encode_envelope(envelope: Envelope) -> dict[str, Any]:
    """The envelope as a map of text keys to ints, bools, text, bytes, lists and None."""
    message = envelope.message
    kind, fields = _fields(message)
    return {
        "s": envelope.stream,
        "h": envelope.shard_id,
        "k": kind,
        "f": message.src,
        "t": message.dst,
        "e": message.epoch,
        **fields,
    }


# -- decoding ---------------------------------------------------------------------------------


def _int(value: dict[str, Any], key: str) -> int:
    got = value.get(key)
    if type(got) is not int or not 0 <= got <= INT_MAX:
        raise MalformedMessage(f"field {key!r} must be an integer in 0..2**63-1")
    return got


def _bool(value: dict[str, Any], key: str) -> bool:
    got = value.get(key)
    if type(got) is not bool:
        raise MalformedMessage(f"field {key!r} must be a bool")
    return got


def _text(value: dict[str, Any], key: str) -> str:
    got = value.get(key)
    if type(got) is not str or not 0 < len(got) <= NAME_CHARS_MAX:
        raise MalformedMessage(f"field {key!r} must be text of 1..{NAME_CHARS_MAX} characters")
    return got


def _decode_batches(
    value: dict[str, Any], start: int, epoch_min: int, epoch_max: int
) -> tuple[StoredBatch, ...]:
    raw = value.get("b")
    if type(raw) is not list or len(raw) > BATCHES_PER_MESSAGE_MAX:
        raise MalformedMessage(f"field 'b' must be a list of at most {BATCHES_PER_MESSAGE_MAX}")
    batches: list[StoredBatch] = []
    offset, epoch = start, epoch_min
    for data in raw:
        if type(data) is not bytes:
            raise MalformedMessage("a batch must be a byte string")
        try:
            batch = decode_stored(data)
        except CorruptDataError as exc:
            raise MalformedMessage(f"batch refused: {exc.message}") from None
        if len(encode_stored(batch)) != len(data):
            raise MalformedMessage("a batch has trailing bytes")
        if batch.base_offset != offset:
            raise MalformedMessage(f"batch at {batch.base_offset} does not follow {offset}")
        if not epoch <= batch.epoch <= epoch_max:
            raise MalformedMessage(f"batch epoch {batch.epoch} outside {epoch}..{epoch_max}")
        if batch.next_offset > INT_MAX:
            raise MalformedMessage("batch offsets out of range")
        batches.append(batch)
        offset, epoch = batch.next_offset, batch.epoch
    return tuple(batches)


def _append(v: dict[str, Any], src: int, dst: int, epoch: int) -> m.Append:
    prev_offset, prev_epoch = _int(v, "p"), _int(v, "q")
    if prev_epoch > epoch:
        raise MalformedMessage("prev_epoch passes the message epoch")
    batches = _decode_batches(v, prev_offset, prev_epoch, epoch)
    return m.Append(src, dst, epoch, prev_offset, prev_epoch, batches, _int(v, "hw"), _int(v, "le"))


def _fetch_reply(v: dict[str, Any], src: int, dst: int, epoch: int) -> m.FetchReply:
    from_offset = _int(v, "o")
    diverge = v.get("da")
    if diverge is not None:
        diverge = _int(v, "da")
    batches = _decode_batches(v, from_offset, 0, epoch)
    if diverge is not None and batches:
        raise MalformedMessage("a fetch reply carries batches or a divergence point, not both")
    return m.FetchReply(
        src, dst, epoch, from_offset, batches, _int(v, "se"), diverge, _int(v, "de")
    )


_Decoder = Callable[[dict[str, Any], int, int, int], m.Message]
_DECODERS: Final[dict[str, _Decoder]] = {
    "fence": lambda v, s, d, e: m.Fence(s, d, e),
    "fence_ack": lambda v, s, d, e: m.FenceAck(s, d, e, _int(v, "n"), _int(v, "l"), _bool(v, "w")),
    "append": _append,
    "append_ack": lambda v, s, d, e: m.AppendAck(s, d, e, _int(v, "n"), _int(v, "d"), _int(v, "g")),
    "append_nack": lambda v, s, d, e: m.AppendNack(
        s, d, e, _int(v, "n"), _int(v, "l"), _int(v, "g")
    ),
    "fetch": lambda v, s, d, e: m.Fetch(s, d, e, _int(v, "o"), _int(v, "l")),
    "fetch_reply": _fetch_reply,
    "stale": lambda v, s, d, e: m.Stale(s, d, e),
}


def decode_envelope(value: Any) -> Envelope:
    """The envelope ``value`` (as CBOR decoded it) encodes. Raises MalformedMessage only."""
    if type(value) is not dict:
        raise MalformedMessage("an envelope must be a map")
    kind = value.get("k")
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None:
        raise MalformedMessage("unknown message kind")
    stream, shard_id = _text(value, "s"), _text(value, "h")
    message = decoder(value, _int(value, "f"), _int(value, "t"), _int(value, "e"))
    return Envelope(stream, shard_id, message)
