"""The record browser's parts: where to start, what one page holds, how data is shown.

``position_of`` turns the browser's form (``type`` = TRIM_HORIZON | AT_SEQUENCE_NUMBER |
AT_TIMESTAMP | LATEST | AFTER_SEQUENCE_NUMBER, with ``seq`` or ``ts``) into a ``Position``;
``read_page`` reads at most ``page_bytes_max`` and ``limit`` records from there through the
engine's public ``read`` (forwarded to the shard's leader in cluster mode) and decodes them with
the client's own ``decode_read``, so what is shown is what a consumer gets. ``shown`` renders
one record's data as text (UTF-8, invalid bytes replaced), pretty JSON (or text, if it is not
JSON), or hex (every byte, 16 a line: byte-exact), and opens KPL-aggregated records (kpl.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from streamd_client.consumer import decode_read
from streamd_client.errors import InvalidArgumentError
from streamd_client.model import Position, parse_sequence, shard_index_of
from streamd_client.results import RawRead, Record

from ...engine import Engine
from . import kpl

ITERATOR_TYPES: Final = (
    "TRIM_HORIZON",
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "AT_TIMESTAMP",
    "LATEST",
)
FORMATS: Final = ("text", "json", "hex")
LIMIT_DEFAULT: Final = 50
LIMIT_MAX: Final = 500
PAGE_BYTES_MAX: Final = 1024 * 1024
SHOWN_BYTES_MAX: Final = 64 * 1024  # of one record's data; the rest is said to be cut


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Record]
    next_offset: int
    high_watermark: int
    millis_behind: int
    shard_end: bool


def position_of(kind: str, seq: str, ts: str) -> Position:
    """Raises InvalidArgumentError (said on the page) for an unknown type or a bad value."""
    kind = kind or "TRIM_HORIZON"
    if kind == "TRIM_HORIZON":
        return Position.trim_horizon()
    if kind == "LATEST":
        return Position.latest()
    if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
        seq = seq.strip()
        if not seq:
            raise InvalidArgumentError(f"{kind} needs a sequence number")
        parse_sequence(seq)  # raises InvalidArgumentError (InvalidSequenceNumberError)
        if kind == "AT_SEQUENCE_NUMBER":
            return Position.at_sequence(seq)
        return Position.after_sequence(seq)
    if kind == "AT_TIMESTAMP":
        return Position.at_timestamp(timestamp_ms_of(ts))
    raise InvalidArgumentError(f"unknown iterator type {kind[:40]!r}")


def timestamp_ms_of(text: str) -> int:
    """Milliseconds since the epoch from ``2026-01-02T03:04:05[.123][Z|+hh:mm]`` (UTC when no
    zone is given: what datetime-local inputs send) or a plain number of milliseconds."""
    text = text.strip()
    if not text:
        raise InvalidArgumentError("AT_TIMESTAMP needs a time")
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgumentError(f"not a time: {text[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def limit_of(text: str) -> int:
    try:
        value = int(text) if text else LIMIT_DEFAULT
    except ValueError:
        raise InvalidArgumentError(f"limit must be a number, got {text[:20]!r}") from None
    if not 1 <= value <= LIMIT_MAX:
        raise InvalidArgumentError(f"limit must be 1..{LIMIT_MAX}")
    return value


async def read_page(
    engine: Engine,
    stream: str,
    shard_id: str,
    position: Position,
    limit: int,
    wait_ms: int = 0,
) -> Page:
    """Raises what ``Engine.read`` raises (StreamNotFoundError, ShardNotFoundError, ...)."""
    # Browsing is not reading for the metrics: the read rates show what consumers read.
    read = await engine.read(stream, shard_id, position, PAGE_BYTES_MAX, wait_ms, counted=False)
    raw = RawRead(
        read.batches,
        read.start_offset,
        read.next_offset,
        read.high_watermark,
        read.millis_behind,
        read.shard_end,
        read.child_shards,
        read.skipped,
    )
    decoded = decode_read(raw, shard_id, shard_index_of(shard_id), limit)
    next_offset = decoded.next_position.offset
    assert next_offset is not None
    return Page(
        decoded.records, next_offset, read.high_watermark, read.millis_behind, decoded.shard_end
    )


def shown(data: bytes, fmt: str) -> str:
    """One record's data for the page (escaped later), at most SHOWN_BYTES_MAX of it."""
    cut = data[:SHOWN_BYTES_MAX]
    more = f"\n… {len(data) - len(cut)} more bytes" if len(data) > len(cut) else ""
    if fmt == "hex":
        return hex_dump(cut) + more
    text = cut.decode("utf-8", "replace")
    if fmt == "json":
        try:
            return json.dumps(json.loads(cut), indent=2, ensure_ascii=False) + more
        except ValueError:
            return text + more
    return text + more


def hex_dump(data: bytes) -> str:
    """16 bytes a line: offset, the bytes in hex, and their printable ASCII."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{at:08x}  {chunk.hex(' '):<47}  {ascii_}")
    return "\n".join(lines)


def arrival_text(arrival_ms: int) -> str:
    when = datetime.fromtimestamp(arrival_ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sub_records(data: bytes) -> list[kpl.SubRecord] | None:
    return kpl.deaggregate(data)
