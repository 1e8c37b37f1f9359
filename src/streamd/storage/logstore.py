"""The ``LogStore`` interface the replication core stands on, and the batch it stores.

A replica's log is a sequence of batches with consecutive offsets. Each batch carries the leader
epoch that wrote it, so the epoch history (the first offset of every epoch, Kafka's KIP-101
leader-epoch cache) is never stored on its own: it is rebuilt from batch headers, and it can
never disagree with the batches.

The interface separates *written* from *durable*, because replication counts only durable
batches: ``append`` writes (a crash may lose it, or tear it half-way), ``sync`` makes everything
written so far durable and says up to where. ``truncate_to`` is durable when it returns (the
file log fsyncs after cutting), so a crash never brings truncated batches back.

``StoredBatch`` is the abstract shape of one batch (the fields of the 64-byte header that
replication looks at, plus an opaque payload and its checksum). The file log maps it onto the
on-disk format of docs/storage-format.md; the in-memory log (``memlog.MemoryLog``) keeps the
objects. The checksum covers every field, so a bit flip anywhere is detected on read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import crc32c

_CHECKED = struct.Struct(">QIIQI?")


class StoreCorruptError(Exception):
    """A stored batch failed its checksum: it is never served. ``offset`` is its base offset."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"stored batch at offset {offset} failed its checksum")
        self.offset = offset


class StoreFullError(Exception):
    """The disk is full: the append did not happen (nothing of it was written)."""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """One batch: ``record_count`` offsets from ``base_offset``, written by leader ``epoch``.

    ``control`` marks a batch with no user records (the epoch-start batch a new leader writes);
    it still takes one offset so that every offset names exactly one batch.
    """

    base_offset: int
    record_count: int
    epoch: int
    producer_id: int
    producer_seq: int
    control: bool
    payload: bytes
    crc: int

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    def intact(self) -> bool:
        return self.crc == checksum_of(self)

    def identity(self) -> tuple[int, int, int, bool, bytes]:
        """What makes two batches the same batch (offsets aside): who wrote it and what."""
        return (self.epoch, self.producer_id, self.producer_seq, self.control, self.payload)


def checksum_of(batch: StoredBatch) -> int:
    head = _CHECKED.pack(
        batch.base_offset,
        batch.record_count,
        batch.epoch,
        batch.producer_id,
        batch.producer_seq,
        batch.control,
    )
    return int(crc32c.crc32c(batch.payload, crc32c.crc32c(head)))


def make_batch(
    base_offset: int,
    record_count: int,
    epoch: int,
    payload: bytes,
    *,
    producer_id: int = 0,
    producer_seq: int = 0,
    control: bool = False,
) -> StoredBatch:
    assert record_count > 0 and base_offset >= 0 and epoch >= 0
    draft = StoredBatch(
        base_offset, record_count, epoch, producer_id, producer_seq, control, payload, 0
    )
    return restamp(draft, base_offset, epoch)


def restamp(batch: StoredBatch, base_offset: int, epoch: int) -> StoredBatch:
    """The same records at another offset and epoch (what a leader does to a client batch)."""
    draft = StoredBatch(
        base_offset,
        batch.record_count,
        epoch,
        batch.producer_id,
        batch.producer_seq,
        batch.control,
        batch.payload,
        0,
    )
    return StoredBatch(
        draft.base_offset,
        draft.record_count,
        draft.epoch,
        draft.producer_id,
        draft.producer_seq,
        draft.control,
        draft.payload,
        checksum_of(draft),
    )


@dataclass(frozen=True, slots=True)
class EpochStart:
    """Epoch ``epoch`` begins at ``start_offset`` (its first batch's base offset)."""

    epoch: int
    start_offset: int


class LogView(Protocol):
    """What the replication core reads synchronously (it never writes through this)."""

    def log_end(self) -> int:
        """The offset after the last written batch (0 for an empty log)."""
        ...

    def epoch_history(self) -> Sequence[EpochStart]:
        """Epoch starts, ascending in both fields, rebuilt from batch headers."""
        ...

    def read(self, offset: int, batches_max: int) -> list[StoredBatch]:
        """Up to ``batches_max`` whole batches from the one holding ``offset`` on.

        Raises StoreCorruptError for a batch that fails its checksum (never returns it).
        """
        ...


class LogStore(LogView, Protocol):
    """A replica's log. Blocking; the driver calls it, the core only sees it as a LogView."""

    def durable_end(self) -> int:
        """Everything below this offset survives a crash."""
        ...

    def append(self, batches: Sequence[StoredBatch]) -> None:
        """Write ``batches`` after the log's end (not durable yet). Raises StoreFullError."""
        ...

    def sync(self) -> int:
        """Make everything written durable; return the new durable end."""
        ...

    def truncate_to(self, offset: int) -> None:
        """Drop every batch at or after ``offset`` (a batch boundary), durably."""
        ...

    def first_damaged(self, visit: Callable[[StoredBatch], None] | None = None) -> int | None:
        """The base offset of the first batch failing its checksum (a scrub), or None; each
        intact batch before it goes to ``visit``, in order (one pass serves both)."""
        ...
