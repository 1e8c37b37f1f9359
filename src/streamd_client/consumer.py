"""Shard readers: decoding fetched batches into records, and iterating a shard.

A read answer carries whole stored batches, still compressed (the server never re-encodes on
its read path). ``decode_read`` checks each batch's CRCs again on this side (the bytes crossed
a network and a kernel since the server checked them), decodes it, drops the records before the
requested start (a batch may begin earlier), applies the caller's limit and computes where the
next read continues. A batch that fails a check raises ``CorruptDataError``; it is never
skipped, because skipping would silently lose records (invariant 6: detected, never served).

``ShardReader`` repeats reads: page by page up to the high watermark, or, when following, with
long-polls (``wait_ms``) at the tip, forever until cancelled. A shard closed by resharding ends
every reader, following ones too, once a read reaches its last record (``shard_end`` in the
answer): the reader then exposes ``child_shards``, the shards that continue it
(``stream_reader.py`` follows them in lineage order). It retries retryable errors with capped,
jittered exponential backoff, giving up after ``retries_max`` failures in a row.
"""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections import deque
from typing import Final, Self

import anyio

from . import batch, kpl
from .client_api import ShardReads
from .errors import CorruptDataError, ProtocolError, StreamdError, ThrottledError
from .model import Position, make_sequence
from .results import ChildShard, RawRead, ReadResult, Record, SkippedRange

log = logging.getLogger(__name__)

READ_RETRIES_MAX_DEFAULT: Final = 10
SKIPPED_KEPT_MAX: Final = 100  # ShardReader.skipped remembers the last this many gaps
READ_BACKOFF_MS_INITIAL: Final = 50
READ_BACKOFF_MS_MAX: Final = 2000


def decode_read(raw: RawRead, shard_id: str, shard_index: int, limit: int | None) -> ReadResult:
    """Turn a raw read answer into records. Raises: CorruptDataError, ProtocolError."""
    records: list[Record] = []
    offset_min = raw.start_offset  # records below this were not asked for, or already seen
    for blob in raw.batches:
        header = _checked_header(blob)
        if header.base_offset < offset_min and header.next_offset <= offset_min:
            continue  # wholly before the start: no need to decompress it
        if header.base_offset > offset_min and records:
            raise ProtocolError(f"read skipped offsets {offset_min}..{header.base_offset - 1}")
        _append_records(records, blob, header, shard_id, shard_index, offset_min)
        offset_min = header.next_offset
        if limit is not None and len(records) >= limit:
            del records[limit:]
            next_offset = records[-1].offset + 1
            break
    else:
        next_offset = max(raw.next_offset, offset_min)
    # A limit that cut the page short did not reach the end, whatever the server's page did.
    shard_end = raw.shard_end and next_offset >= raw.next_offset
    skipped = None
    if raw.skipped is not None:
        base, end = raw.skipped
        first, last = make_sequence(shard_index, base), make_sequence(shard_index, end - 1)
        skipped = SkippedRange(shard_id, first, last, base, end)
    return ReadResult(
        records,
        Position.at_offset(next_offset),
        raw.millis_behind,
        raw.high_watermark,
        shard_end,
        raw.child_shards if shard_end else (),
        skipped,
    )


def _checked_header(blob: bytes) -> batch.BatchHeader:
    header = batch.parse_header(blob)
    if header.length != len(blob):
        raise CorruptDataError(f"batch is {len(blob)} bytes but its header says {header.length}")
    batch.verify_payload(blob, header)
    return header


def _append_records(
    out: list[Record],
    blob: bytes,
    header: batch.BatchHeader,
    shard_id: str,
    shard_index: int,
    offset_min: int,
) -> None:
    keys, _hashes, datas = batch.decode_records(blob, header)
    if not all(type(k) is str for k in keys) or not all(type(d) is bytes for d in datas):
        raise CorruptDataError(f"batch at offset {header.base_offset} holds malformed records")
    arrival_ms = header.last_arrival_ms
    base = header.base_offset
    for i in range(max(0, offset_min - base), header.record_count):
        offset = base + i
        sequence = make_sequence(shard_index, offset)
        out.append(Record(shard_id, sequence, keys[i], datas[i], arrival_ms, offset))


class PagedRecords(ABC):
    """Record-by-record async iteration over the pages ``read_page`` returns (None: the end).
    Shared by the shard reader and the whole-stream reader."""

    def __init__(self) -> None:
        self._page: list[Record] = []
        self._page_index = 0  # Invariant: 0 <= _page_index <= len(_page)

    @abstractmethod
    async def read_page(self) -> list[Record] | None:
        """The next non-empty page, or None when iteration ends."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Record:
        if self._page_index >= len(self._page):
            page = await self.read_page()
            if page is None:
                raise StopAsyncIteration
            self._page, self._page_index = page, 0
        record = self._page[self._page_index]
        self._page_index += 1
        return record


class ShardReader(PagedRecords):
    """Iterates one shard's records: ``async for record in reader``. Not shared between tasks.

    ``position`` is where iteration would continue (right after the last record yielded).
    ``shard_end`` becomes True once a closed shard was read to its end (iteration then stops,
    following or not), and ``child_shards`` then name the shards that continue it.
    ``skipped`` lists the quarantined ranges iteration jumped (the last SKIPPED_KEPT_MAX), each
    also logged as a warning: the gaps in the sequence numbers, named.
    Iteration raises: CorruptDataError (never skipped; DataCorruptError names the damaged range
    of the server's log, which an operator can quarantine), StreamNotFoundError, ShardNotFoundError,
    InvalidSequenceNumberError, and a retryable error once ``retries_max`` attempts in a row
    failed. ``deaggregate`` unpacks KPL aggregates (kpl.py) into their user records (each with
    its ``sub_sequence``; ``position`` inside an aggregate is the aggregate's own).
    """

    def __init__(
        self,
        client: ShardReads,
        stream: str,
        shard_id: str,
        start: Position,
        *,
        follow: bool,
        wait_ms: int,
        max_bytes: int,
        retries_max: int = READ_RETRIES_MAX_DEFAULT,
        deaggregate: bool = False,
    ) -> None:
        super().__init__()
        self.deaggregate = deaggregate
        self.stream = stream
        self.shard_id = shard_id
        self.follow = follow
        self.wait_ms = wait_ms
        self.max_bytes = max_bytes
        self.retries_max = retries_max
        self.millis_behind = 0
        self.high_watermark = 0
        self.shard_end = False
        self.child_shards: tuple[ChildShard, ...] = ()
        self.skipped: deque[SkippedRange] = deque(maxlen=SKIPPED_KEPT_MAX)
        self._client = client
        self._next_position = start  # where the next read starts
        self._finished = False

    @property
    def position(self) -> Position:
        if self._page_index < len(self._page):
            return Position.at_offset(self._page[self._page_index].offset)
        return self._next_position

    async def read_page(self) -> list[Record] | None:
        """The next non-empty page of records, or None once caught up (when not following).

        Must not be mixed with iteration over a partly consumed page.
        Raises: as the class docstring says.
        """
        while not self._finished:
            started_at = self._next_position
            result = await self._read_with_retries()
            self._next_position = result.next_position
            self.millis_behind = result.millis_behind
            self.high_watermark = result.high_watermark
            if result.skipped is not None:
                self.skipped.append(result.skipped)
                log_skipped(self.stream, result.skipped)
            at_tip = (result.next_position.offset or 0) >= result.high_watermark
            stuck = not result.records and result.next_position == started_at
            if result.shard_end:
                self.shard_end, self.child_shards = True, result.child_shards
                self._finished = True
            elif not self.follow and (at_tip or stuck):
                self._finished = True
            records = kpl.deaggregate(result.records) if self.deaggregate else result.records
            if records:
                return records
        return None

    async def _read_with_retries(self) -> ReadResult:
        wait_ms = self.wait_ms if self.follow else 0
        failures = 0
        while True:
            try:
                return await self._client.read(
                    self.stream,
                    self.shard_id,
                    self._next_position,
                    max_bytes=self.max_bytes,
                    wait_ms=wait_ms,
                )
            except StreamdError as exc:
                failures += 1
                if not exc.retryable or failures > self.retries_max:
                    raise
                pause_s = backoff_s(failures, READ_BACKOFF_MS_INITIAL, READ_BACKOFF_MS_MAX)
                if isinstance(exc, ThrottledError):  # over the shard's read quota: as told
                    pause_s = max(pause_s, exc.retry_after_s or 0.0)
                await anyio.sleep(pause_s)


def backoff_s(attempt: int, backoff_ms_initial: int, backoff_ms_max: int) -> float:
    """Exponential backoff with full jitter (AWS's): uniform in [0, min(max, initial * 2**n)]."""
    ceiling_ms = min(backoff_ms_max, backoff_ms_initial * 2 ** min(attempt, 30))
    return random.uniform(0, ceiling_ms) / 1000


def log_skipped(stream: str, gap: SkippedRange) -> None:
    log.warning(
        "%s/%s: records %s to %s (%d) were quarantined on the server; reading goes on after them",
        stream,
        gap.shard_id,
        gap.from_sequence,
        gap.to_sequence,
        gap.next_offset - gap.base_offset,
    )
