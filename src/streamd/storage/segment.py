"""One segment file: whole batches back to back, plus its sparse in-memory index.

A segment is named by the base offset of its first batch. Only the last (active) segment is
appended to, always at ``size_bytes``; older ones are sealed and never written again.

The sparse index is a list of ``IndexEntry(offset, position, time_before_ms)``: one entry at the
first batch, then one whenever ``index_interval_bytes`` have passed since the last entry, and one
forced after every stretch recovery skipped (so that no header scan starting at an entry ever
walks into garbage). ``time_before_ms`` is the largest ``last_arrival_ms`` of the batches before
the entry's batch in this segment (-1 for none), non-decreasing, so ``bisect`` answers both
"where is offset X" and "where could the first batch at or after time T be".

Threads: the appender alone mutates. Readers take a snapshot of ``size_bytes`` and only look at
bytes below it; entries are whole tuples appended to a list (atomic under the GIL); fields are
updated in the order index -> times -> size -> next_offset, so anything a reader can see through
``size_bytes`` or an end offset is already written and indexed.

Descriptors: the file is opened on first use, not held for the segment's life. ``pin`` opens it
if needed and counts a user in, ``unpin`` counts it out; every use of ``fd`` sits between the two.
The shared ``FdCache`` closes the least recently used idle descriptors beyond its bound
(``close_if_idle``: none while pinned or while a write awaits its fsync), and retention
(``retire``) closes the descriptor once the last user is done: a closed descriptor number could
otherwise be reused by another file and a pread would read its bytes. Writes are positional
(``pwrite`` at ``size_bytes``), so a reopened descriptor needs no seek.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple, NoReturn

import structlog

from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError, StorageFullError

from .errors import FULL_DISK_ERRNOS, SyncFailedError
from .fdcache import FdCache
from .files import FILE_MODE, pread_exact, pwrite_all, segment_path
from .metrics import FSYNC_SECONDS
from .producers import ProducerTable

log = structlog.get_logger(__name__)

TIME_NONE_MS = -1


class Stretch(NamedTuple):
    """What holds an offset: a batch, or a damaged stretch, as offsets and as bytes."""

    base_offset: int
    next_offset: int  # end excluded
    position: int  # first byte in the segment file
    end_position: int  # end excluded
    intact: bool  # a whole batch whose header and payload CRCs pass


class IndexEntry(NamedTuple):
    offset: int  # base offset of the batch at ``position``
    position: int  # byte position of that batch's header in the segment file
    time_before_ms: int  # max last_arrival_ms of the segment's batches before it, or -1


_entry_offset = itemgetter(0)
_entry_position = itemgetter(1)
_entry_time = itemgetter(2)


class Segment:
    def __init__(
        self,
        path: Path,
        base_offset: int,
        *,
        fds: FdCache,
        writable: bool,
        fsync: bool,
        index_interval_bytes: int,
        producers_max: int,
    ) -> None:
        self.path = path
        self.writable = writable  # the active segment; sealed ones reopen read-only
        self.base_offset = base_offset
        self.size_bytes = 0  # Invariant: bytes [0, size_bytes) are batches (or known corruption)
        self.next_offset = base_offset  # Invariant: base_offset <= next_offset
        self.batches = 0
        self.first_batch_ms = TIME_NONE_MS  # the first batch's last_arrival_ms (segment age)
        self.last_batch_ms = TIME_NONE_MS  # the last batch's last_arrival_ms
        self.arrival_max_ms = TIME_NONE_MS  # max last_arrival_ms of all batches (retention)
        self.entries: list[IndexEntry] = []
        self.producers = ProducerTable(producers_max)  # this segment's summary, for its .index
        self._index_interval_bytes = index_interval_bytes
        self._fds = fds
        self._fsync = fsync  # whether unsynced writes are tracked (they keep the fd open)
        self._lock = threading.Lock()
        self._fd: int | None = None  # Invariant: None, or open on ``path``
        self._pins = 0  # threads using ``_fd`` now
        self._unsynced = False  # written since the last fdatasync (only when ``_fsync``)
        self._retired = False

    @classmethod
    def create(
        cls,
        directory: Path,
        base_offset: int,
        *,
        fds: FdCache,
        fsync: bool,
        index_interval_bytes: int,
        producers_max: int,
    ) -> Segment:
        segment = cls(
            segment_path(directory, base_offset),
            base_offset,
            fds=fds,
            writable=True,
            fsync=fsync,
            index_interval_bytes=index_interval_bytes,
            producers_max=producers_max,
        )
        segment._fd = os.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        fds.used(segment, opened=True)
        return segment

    @property
    def fd(self) -> int:
        """The open descriptor; only between ``pin`` and ``unpin``."""
        fd = self._fd
        assert fd is not None and self._pins > 0, "pin the segment before using its fd"
        return fd

    def __repr__(self) -> str:
        return f"Segment({self.path.name}, next_offset={self.next_offset}, bytes={self.size_bytes})"

    # -- bookkeeping (appender and recovery) ----------------------------------------------------

    def add_batch(
        self, header: batchfmt.BatchHeader, position: int, *, force_entry: bool = False
    ) -> None:
        """Account for the whole batch ``header`` stored at ``position`` (already on disk)."""
        assert header.base_offset >= self.next_offset, (header.base_offset, self.next_offset)
        assert position >= self.size_bytes
        if (
            force_entry
            or not self.entries
            or (position - self.entries[-1].position >= self._index_interval_bytes)
        ):
            self.entries.append(IndexEntry(header.base_offset, position, self.arrival_max_ms))
        if self.batches == 0:
            self.first_batch_ms = header.last_arrival_ms
        self.last_batch_ms = header.last_arrival_ms
        self.arrival_max_ms = max(self.arrival_max_ms, header.last_arrival_ms)
        self.batches += 1
        self.producers.record(
            header.producer_id, (header.producer_seq, header.base_offset, header.record_count)
        )
        self.size_bytes = position + header.length
        self.next_offset = header.next_offset

    def append(self, data: bytes, header: batchfmt.BatchHeader) -> None:
        """Write a whole batch at the end. On failure the file is cut back and nothing changes.

        Raises StorageFullError (ENOSPC, EDQUOT) or the OSError.
        """
        assert header.base_offset == self.next_offset, (header.base_offset, self.next_offset)
        assert header.length == len(data)
        position = self.size_bytes
        pinned = self.pin()
        assert pinned, "append to a retired segment"
        try:
            self._unsynced = self._fsync
            pwrite_all(self.fd, data, position)
        except OSError as exc:
            self._undo_partial_write(position, exc)
            if exc.errno in FULL_DISK_ERRNOS:
                raise StorageFullError(f"disk full writing {self.path}: {exc}") from exc
            raise
        finally:
            self.unpin()
        self.add_batch(header, position)

    def _undo_partial_write(self, position: int, exc: OSError) -> None:
        log.warning(
            "storage.append.failed", segment=str(self.path), position=position, error=str(exc)
        )
        try:
            os.ftruncate(self.fd, position)
        except OSError as truncate_exc:
            # The next append rewrites from ``position`` anyway (the seek below), and recovery
            # cuts any leftover tail; so this is logged, not fatal.
            log.error(
                "storage.append.truncate_failed", segment=str(self.path), error=str(truncate_exc)
            )

    def sync(self) -> None:
        """fdatasync. Raises SyncFailedError (never retried as if nothing happened); the write
        stays unsynced, so the descriptor stays open."""
        pinned = self.pin()
        assert pinned, "sync of a retired segment"
        try:
            started = time.perf_counter()
            os.fdatasync(self.fd)
            FSYNC_SECONDS.observe(time.perf_counter() - started)
            self._unsynced = False
        except OSError as exc:
            raise SyncFailedError(self.path.name, exc) from exc
        finally:
            self.unpin()

    # -- descriptor -----------------------------------------------------------------------------

    def pin(self) -> bool:
        """Open the file if needed and count a user in; False if this segment was retired.
        Raises OSError if the file cannot be opened (EMFILE, or it vanished)."""
        with self._lock:
            if self._retired:
                return False
            opened = self._fd is None
            if opened:
                self._fd = os.open(self.path, os.O_RDWR if self.writable else os.O_RDONLY)
            self._pins += 1
        self._fds.used(self, opened=opened)  # after our lock: see fdcache.py on lock order
        return True

    def unpin(self) -> None:
        with self._lock:
            assert self._pins > 0
            self._pins -= 1
            closed = self._retired and self._pins == 0 and self._close()
        if closed:
            self._fds.forget(self)
        else:
            self._fds.released()

    def close_if_idle(self) -> bool:
        """For the FdCache: close the descriptor unless in use or unsynced. Never blocks."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._fd is None:
                return True
            if self._pins or self._unsynced:
                return False
            return self._close()
        finally:
            self._lock.release()

    def retire(self) -> None:
        """No new users; the descriptor closes now or when the last user unpins."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
            closed = self._pins == 0 and self._close()
        if closed:
            self._fds.forget(self)

    def _close(self) -> bool:
        """Close the descriptor (caller holds the lock); whether there was one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        os.close(fd)
        return True

    # -- readers (the caller pins) --------------------------------------------------------------

    def read(
        self, offset: int, end_offset: int, budget_bytes: int, *, at_least_one: bool
    ) -> tuple[list[bytes], int, bool]:
        """Whole batches from the one containing ``offset``, below ``end_offset``, within budget.

        Returns (batches, the offset after the last one, whether the segment's end was reached).
        Verifies both CRCs of every batch; the first batch failing raises CorruptDataError with
        its offset range, a later one just ends the list (the next read reports it).
        """
        size = self.size_bytes
        found = self._seek(offset, size)
        if found is None:
            return [], offset, True
        position, first = found
        if not at_least_one and first.length > budget_bytes:
            return [], offset, False
        want = min(size - position, max(budget_bytes, first.length))
        window = pread_exact(self.fd, want, position)
        batches, at, next_offset = self._take(window, first, end_offset)
        # A sealed segment may end in bytes recovery could not parse but that hide no offsets.
        return batches, next_offset, position + at >= size or next_offset >= self.next_offset

    def _take(
        self, window: bytes, first: batchfmt.BatchHeader, end_offset: int
    ) -> tuple[list[bytes], int, int]:
        batches: list[bytes] = []
        at, expected = 0, first.base_offset
        while at < len(window) and expected < end_offset:
            try:
                header = batchfmt.parse_header(window, at)
                if header.base_offset != expected or at + header.length > len(window):
                    raise CorruptDataError("batch does not continue the log here")
                batchfmt.verify_payload(window, header, at)
            except CorruptDataError as exc:
                if batches:
                    break
                self._report_corrupt(first, exc)
            batches.append(window[at : at + header.length])
            at += header.length
            expected = header.next_offset
        return batches, at, expected

    def _report_corrupt(self, header: batchfmt.BatchHeader, exc: CorruptDataError) -> NoReturn:
        log.error(
            "storage.read.corrupt",
            segment=str(self.path),
            base_offset=header.base_offset,
            next_offset=header.next_offset,
            error=exc.message,
        )
        raise CorruptDataError(
            f"stored batch [{header.base_offset}, {header.next_offset}) is corrupt: {exc.message}",
            base_offset=header.base_offset,
            next_offset=header.next_offset,
        ) from exc

    def _seek(self, offset: int, size: int) -> tuple[int, batchfmt.BatchHeader] | None:
        """Position and header of the batch holding ``offset``; None if it is not in here."""
        entries = self.entries
        i = bisect.bisect_right(entries, offset, key=_entry_offset) - 1
        if i < 0:
            return None
        position, expected = entries[i].position, entries[i].offset
        while position < size:
            try:
                header = self._header_at(position)
            except CorruptDataError as exc:
                raise self._unreadable(position, expected, exc) from exc
            if header.next_offset > offset:
                if header.base_offset > offset:
                    raise CorruptDataError(
                        f"offset {offset} falls in a gap of {self.path.name}",
                        base_offset=expected,
                        next_offset=header.base_offset,
                    )
                return position, header
            position += header.length
            expected = header.next_offset
        return None

    def _unreadable(self, position: int, expected: int, exc: CorruptDataError) -> CorruptDataError:
        """A header that recovery found whole no longer parses (it rotted since): report the
        stretch up to the next index entry, the next place known to hold a good header."""
        j = bisect.bisect_right(self.entries, position, key=_entry_position)
        resume = self.entries[j].offset if j < len(self.entries) else self.next_offset
        log.error(
            "storage.read.corrupt",
            segment=str(self.path),
            position=position,
            base_offset=expected,
            next_offset=resume,
            error=exc.message,
        )
        return CorruptDataError(
            f"unreadable batch header at byte {position} of {self.path.name}",
            base_offset=expected,
            next_offset=resume,
        )

    def _header_at(self, position: int) -> batchfmt.BatchHeader:
        return batchfmt.parse_header(pread_exact(self.fd, batchfmt.HEADER_BYTES, position))

    def position_of(self, offset: int) -> int:
        """Byte position of the batch starting at ``offset``, or the end for ``next_offset``.

        Raises CorruptDataError if no batch starts there (mid-batch, or an unreadable stretch).
        """
        if offset >= self.next_offset:
            assert offset == self.next_offset, (offset, self.next_offset)
            return self.size_bytes
        # Walk the headers before the batch only: a cut at a damaged batch (a replica repairing
        # its log) must not need that batch's own header.
        entries = self.entries
        i = bisect.bisect_right(entries, offset, key=_entry_offset) - 1
        if i >= 0:
            position, expected = entries[i].position, entries[i].offset
            while position < self.size_bytes and expected < offset:
                try:
                    header = self._header_at(position)
                    if header.base_offset != expected:
                        raise CorruptDataError("batch does not continue the log here")
                except CorruptDataError as exc:
                    raise self._unreadable(position, expected, exc) from exc
                position += header.length
                expected = header.next_offset
            if expected == offset:
                return position
        raise CorruptDataError(f"no batch of {self.path.name} starts at offset {offset}")

    def stretch_at(self, offset: int) -> Stretch:
        """The batch or damaged stretch holding ``offset``, read from the file (not trusted from
        memory): for quarantining, which must move aside damaged bytes only.

        An unreadable header's stretch runs to the next index entry (recovery forces one after
        every stretch it skipped); a payload that fails its CRC is one damaged batch.
        """
        size, entries = self.size_bytes, self.entries
        i = bisect.bisect_right(entries, offset, key=_entry_offset) - 1
        if not self.base_offset <= offset < self.next_offset or i < 0:
            raise CorruptDataError(f"offset {offset} is not in {self.path.name}")
        position, expected = entries[i].position, entries[i].offset
        while position < size:
            try:
                header = self._header_at(position)
                if header.base_offset != expected or position + header.length > size:
                    raise CorruptDataError("batch does not continue the log here")
            except CorruptDataError:
                j = bisect.bisect_right(entries, position, key=_entry_position)
                end_position, resume = (
                    (entries[j].position, entries[j].offset)
                    if j < len(entries)
                    else (size, self.next_offset)
                )
                if resume > offset:
                    return Stretch(expected, resume, position, end_position, False)
                position, expected = end_position, resume
                continue
            if header.next_offset > offset:
                window = pread_exact(self.fd, header.length, position)
                try:
                    batchfmt.verify_payload(window, header)
                except CorruptDataError:
                    return Stretch(
                        expected, header.next_offset, position, position + header.length, False
                    )
                return Stretch(
                    expected, header.next_offset, position, position + header.length, True
                )
            position += header.length
            expected = header.next_offset
        return Stretch(expected, self.next_offset, size, size, False)  # offsets with no bytes

    def read_bytes(self, position: int, end_position: int) -> bytes:
        return pread_exact(self.fd, end_position - position, position)

    def find_time(self, timestamp_ms: int, end_offset: int) -> int | None:
        """Base offset of the first batch below ``end_offset`` with last_arrival_ms >= it."""
        size = self.size_bytes
        entries = self.entries
        if not entries:
            return None
        # The last entry all of whose predecessors are older: the answer is at or after it.
        i = max(0, bisect.bisect_left(entries, timestamp_ms, key=_entry_time) - 1)
        position = entries[i].position
        while position < size:
            try:
                header = self._header_at(position)
            except CorruptDataError:
                # A stretch recovery skipped: every skip is followed by an index entry.
                j = bisect.bisect_right(entries, position, key=_entry_position)
                if j >= len(entries):
                    return None
                position = entries[j].position
                continue
            if header.base_offset >= end_offset:
                return None
            if header.last_arrival_ms >= timestamp_ms:
                return header.base_offset
            position += header.length
        return None
