"""The file log (``ShardLog``) seen through the ``LogStore`` interface the replication core uses.

An adapter rather than a change of ShardLog's own API, which the shard pipeline still uses as it
is. Each ``StoredBatch`` becomes one batch in the on-disk format of docs/storage-format.md:

    StoredBatch       header field (batch.py)
    base_offset       base offset (bytes 8..16)
    record_count      record count (16..20)
    epoch             leader epoch (20..24)
    producer_id       producer id (40..48)
    producer_seq      producer sequence (48..52)
    control, payload  the stored payload: one kind byte (0 records, 1 control) + ``payload``
    crc               not stored: recomputed on read (``make_batch``) once both file CRCs pass

Codec is always "none" (the payload is opaque here) and the arrival times are 0, so segments
roll by size only. A batch whose header or payload CRC fails is never returned: ``read`` raises
``StoreCorruptError`` with its base offset.

The epoch history (first offset of every epoch) is not stored: ``open`` rebuilds it from the
batch headers of the recovered log, ``append`` extends it and ``truncate_to`` cuts it, so it can
never disagree with the batches. ``truncate_to`` is ShardLog's own (it fsyncs the cut segment and
the directory), after which the log is reopened. ``durable_end`` is what was synced, or recovered
at open (recovery keeps only what is on the disk); it is conservative after a truncation.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import crc32c

from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError, StorageFullError

from .config import LogConfig
from .log import ShardLog
from .logstore import EpochStart, StoreCorruptError, StoredBatch, StoreFullError, make_batch

SCRUB_READ_BYTES = 1 << 20
_HEADER = struct.Struct(">HBBIQIIQQQIIII")
assert _HEADER.size == batchfmt.HEADER_BYTES
_HEADER_CRC_AT = 60
_KIND_RECORDS = 0
_KIND_CONTROL = 1


def encode_stored(batch: StoredBatch) -> bytes:
    """``batch`` as one stamped on-disk batch (header + kind byte + payload)."""
    body = bytes((_KIND_CONTROL if batch.control else _KIND_RECORDS,)) + batch.payload
    header = bytearray(
        _HEADER.pack(
            batchfmt.MAGIC,
            batchfmt.FORMAT_VERSION,
            batchfmt.CODEC_NONE,
            batchfmt.HEADER_BYTES + len(body),
            batch.base_offset,
            batch.record_count,
            batch.epoch,
            0,
            0,
            batch.producer_id,
            batch.producer_seq,
            len(body),
            crc32c.crc32c(body),
            0,
        )
    )
    struct.pack_into(">I", header, _HEADER_CRC_AT, crc32c.crc32c(bytes(header[:_HEADER_CRC_AT])))
    return bytes(header) + body


def decode_stored(data: bytes) -> StoredBatch:
    """The ``StoredBatch`` of one whole on-disk batch. Raises CorruptDataError."""
    header = batchfmt.parse_header(data)
    batchfmt.verify_payload(data, header)
    body = data[batchfmt.HEADER_BYTES : header.length]
    if not body or body[0] not in (_KIND_RECORDS, _KIND_CONTROL):
        raise CorruptDataError(
            f"unknown batch kind at offset {header.base_offset}",
            base_offset=header.base_offset,
            record_count=header.record_count,
        )
    return make_batch(
        header.base_offset,
        header.record_count,
        header.leader_epoch,
        bytes(body[1:]),
        producer_id=header.producer_id,
        producer_seq=header.producer_seq,
        control=body[0] == _KIND_CONTROL,
    )


class FileLogStore:
    """A ``LogStore`` on one shard directory. One thread at a time (the replica's driver)."""

    def __init__(self, directory: Path, config: LogConfig) -> None:
        """Open (creating if missing) and recover ``directory``; see ``ShardLog.open``."""
        assert config.fsync, "a LogStore promises durability: fsync=never has none"
        self.directory = directory
        self.config = config
        self._log = ShardLog.open(directory, config)
        self._epochs: list[EpochStart] = []
        self._rebuild_epochs()
        self._durable = self._log.next_offset  # recovery keeps what the files hold

    def _rebuild_epochs(self) -> None:
        """Walk the batch headers of the whole log (a damaged batch is skipped, not trusted)."""
        epochs: list[EpochStart] = []
        offset = self._log.start_offset
        end = self._log.next_offset
        while offset < end:
            try:
                got = self._log.read(offset, 1 << 20, end)
            except CorruptDataError as exc:  # skip the damaged range; first_damaged reports it
                details = exc.details
                base = int(details.get("base_offset", offset))
                skip_to = details.get("next_offset", base + int(details.get("record_count", 1)))
                offset = max(offset + 1, int(skip_to))
                continue
            for data in got:
                header = batchfmt.parse_header(data)
                if not epochs or epochs[-1].epoch != header.leader_epoch:
                    epochs.append(EpochStart(header.leader_epoch, header.base_offset))
                offset = header.next_offset
            if not got:
                break
        self._epochs = epochs

    def close(self, *, clean: bool = True) -> None:
        """Close the files; ``clean=False`` leaves no marker (as a crash does)."""
        self._log.close(clean=clean)

    # -- LogView -----------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Segment bytes on disk (node_stats: streamd top)."""
        return self._log.size_bytes

    def log_end(self) -> int:
        return self._log.next_offset

    def epoch_history(self) -> Sequence[EpochStart]:
        return tuple(self._epochs)

    def read(self, offset: int, batches_max: int) -> list[StoredBatch]:
        assert batches_max > 0
        end = self._log.next_offset
        out: list[StoredBatch] = []
        while offset < end and len(out) < batches_max:
            try:
                got = self._log.read(offset, 1, end)  # at least one batch, at most one here
                batch = decode_stored(got[0])
            except CorruptDataError as exc:
                raise StoreCorruptError(int(exc.details.get("base_offset", offset))) from None
            out.append(batch)
            offset = batch.next_offset
        return out

    # -- LogStore ----------------------------------------------------------------------------

    def durable_end(self) -> int:
        return self._durable

    def append(self, batches: Sequence[StoredBatch]) -> None:
        start = self._log.next_offset
        epochs = list(self._epochs)
        last_epoch = epochs[-1].epoch if epochs else -1
        try:
            for batch in batches:
                assert batch.base_offset == self._log.next_offset
                assert batch.epoch >= last_epoch, (batch.epoch, last_epoch)
                self._log.append(encode_stored(batch))
                if batch.epoch != last_epoch:
                    epochs.append(EpochStart(batch.epoch, batch.base_offset))
                    last_epoch = batch.epoch
        except StorageFullError as exc:
            if self._log.next_offset != start:  # undo the part of this call that got written
                self._cut(start)
            raise StoreFullError(exc.message) from exc
        self._epochs = epochs

    def sync(self) -> int:
        """May run in another thread while ``append`` runs (the replication driver does): the
        end is read before the fsync, so a batch appended meanwhile is never claimed durable.
        Never concurrently with ``truncate_to`` or ``close``."""
        end = self._log.next_offset
        self._log.sync()
        self._durable = max(self._durable, end)
        return end

    def truncate_to(self, offset: int) -> None:
        starts = [e.start_offset for e in self._epochs]
        del self._epochs[bisect.bisect_left(starts, offset) :]
        self._cut(offset)

    def _cut(self, offset: int) -> None:
        self._log.truncate_to(offset)  # fsyncs the cut and closes the log
        self._log = ShardLog.open(self.directory, self.config)
        assert self._log.next_offset == offset, (self._log.next_offset, offset)
        self._durable = min(self._durable, offset)

    def first_damaged(self, visit: Callable[[StoredBatch], None] | None = None) -> int | None:
        """Scrub: read every batch (1 MiB at a time), verifying both CRCs, handing each to
        ``visit``; the first failing one's base offset. (``ShardLog.read`` raises only for the
        first batch it reads; a later bad one ends its list, so the next read meets it first.)"""
        offset, end = self._log.start_offset, self._log.next_offset
        while offset < end:
            try:
                got = self._log.read(offset, SCRUB_READ_BYTES, end)
                for data in got:
                    batch = decode_stored(data)
                    if visit is not None:
                        visit(batch)
                    offset = batch.next_offset
            except CorruptDataError as exc:
                return int(exc.details.get("base_offset", offset))
            if not got:
                break
        return None
