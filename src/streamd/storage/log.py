"""ShardLog: one shard's durable log, a directory of segment files (see segment.py).

Appends go to the last (active) segment; it rolls (is sealed and a new one started, named by
``next_offset``) before a batch would take it past ``segment_bytes_max`` or when its first batch
is ``segment_age_ms_max`` older than the batch being appended. Age is measured in batch arrival
times, not a clock read here, so that rolls are deterministic and testable. Retention deletes
whole segments, oldest first. Opening runs recovery (recovery.py and its decision table in
scan.py).

Threads: ``append``, ``sync``, ``delete_segments_before`` and ``close`` run in one thread at a
time (the shard's appender). ``read`` and ``offset_for_timestamp`` run in any thread, concurrently
with those. The segment list is a tuple replaced on roll and retention (copy-on-write), so a
reader walks a stable snapshot; a reader pins the segment it reads so that retention never closes
a descriptor under it; ``next_offset`` is assigned last in ``append``, after the bytes and index
entries it makes reachable. ``producers`` may be looked up (``get``) from other threads; a
producer's deque is replaced on update, never mutated, so iterating one is safe too.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from operator import attrgetter, itemgetter
from pathlib import Path

import structlog

from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError, InvalidArgumentError, StorageFullError

from . import quarantine as book
from .config import LogConfig, RecoveryReport
from .errors import FULL_DISK_ERRNOS, OffsetTrimmedError, SyncFailedError
from .fdcache import FdCache
from .files import fsync_dir, index_path, write_marker
from .index_file import summarize, write_index
from .producers import ProducerBatch
from .quarantine import Quarantined
from .recovery import Recovered, recover
from .segment import Segment, Stretch

log = structlog.get_logger(__name__)

_segment_base = attrgetter("base_offset")
_range_base = itemgetter(0)


class ShardLog:
    def __init__(self, directory: Path, config: LogConfig, recovered: Recovered) -> None:
        """Use ``ShardLog.open``."""
        segments = recovered.segments
        assert segments and all(
            a.next_offset == b.base_offset for a, b in itertools.pairwise(segments)
        ), "segments must be contiguous after recovery"
        self.directory = directory
        self.config = config
        self.recovery: RecoveryReport = recovered.report
        self._segments: tuple[Segment, ...] = tuple(segments)  # replaced, never mutated
        self._producers = recovered.producers
        self.producers: dict[int, deque[ProducerBatch]] = self._producers.entries
        self.corrupt_ranges: list[tuple[int, int]] = list(recovered.report.corrupt_ranges)
        # Ranges an operator moved aside (quarantine.py): readers skip them. Replaced, never
        # mutated, so readers in other threads see one whole list.
        self._book: list[Quarantined] = book.load(directory)
        self.quarantined: list[tuple[int, int]] = [
            (q.base_offset, q.next_offset) for q in self._book
        ]
        # Invariant: start_offset <= next_offset; both only grow.
        self.start_offset = segments[0].base_offset
        self.next_offset = segments[-1].next_offset
        self.last_arrival_ms = next((s.last_batch_ms for s in reversed(segments) if s.batches), 0)
        self._fds = recovered.fds
        self._closed = False
        self._cut: tuple[int, int, int] | None = None  # truncate_to's (offset, segment, byte)
        self._log = log.bind(directory=str(directory))

    @classmethod
    def open(
        cls,
        directory: Path,
        config: LogConfig,
        *,
        verify_all: bool = True,
        fds: FdCache | None = None,
    ) -> ShardLog:
        """Open (creating if missing) and recover a shard directory; see ``self.recovery``.

        ``fds`` bounds open segment files across every log sharing it (default: this log's own).
        Raises OSError if the directory or its files cannot be read.
        """
        return cls(directory, config, recover(directory, config, verify_all=verify_all, fds=fds))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return [segment.base_offset for segment in self._segments]

    # -- the appender's side --------------------------------------------------------------------

    def append(self, batch: bytes) -> None:
        """Append one whole stamped batch whose base offset is ``next_offset``. No fsync.

        Raises StorageFullError (disk full; nothing changed), OSError (nothing changed), or
        CorruptDataError if ``batch`` has no valid header (a caller bug).
        """
        assert not self._closed
        header = batchfmt.parse_header(batch)
        assert header.length == len(batch), (header.length, len(batch))
        assert header.base_offset == self.next_offset, (header.base_offset, self.next_offset)
        reason = self._roll_reason(header)
        if reason is not None:
            self._roll(reason)
        active = self._segments[-1]
        active.append(batch, header)
        self._producers.record(
            header.producer_id, (header.producer_seq, header.base_offset, header.record_count)
        )
        self.last_arrival_ms = header.last_arrival_ms
        self.next_offset = header.next_offset
        assert active.next_offset == self.next_offset

    def _roll_reason(self, header: batchfmt.BatchHeader) -> str | None:
        active = self._segments[-1]
        if active.size_bytes == 0:
            return None
        if active.size_bytes + header.length > self.config.segment_bytes_max:
            return "size"
        if header.last_arrival_ms - active.first_batch_ms >= self.config.segment_age_ms_max:
            return "age"
        return None

    def _roll(self, reason: str) -> None:
        """Seal the active segment (fsync, .index) and start an empty one at ``next_offset``."""
        sealed = self._segments[-1]
        assert sealed.size_bytes > 0 and sealed.next_offset == self.next_offset
        with _full_disk_is_typed(sealed.path):
            if self.config.fsync:
                sealed.sync()
            write_index(
                index_path(self.directory, sealed.base_offset),
                summarize(sealed, self._ranges_within(sealed)),
            )
            active = self._create_segment(self.next_offset)
        self._segments = (*self._segments, active)
        sealed.writable = False  # never written again: a reopened descriptor is read-only
        sealed.producers.clear()  # its summary lives in the .index file now
        self._log.info(
            "storage.segment.rolled",
            reason=reason,
            sealed=sealed.path.name,
            sealed_bytes=sealed.size_bytes,
            sealed_batches=sealed.batches,
            active=active.path.name,
        )

    def _create_segment(self, base_offset: int) -> Segment:
        segment = Segment.create(
            self.directory,
            base_offset,
            fds=self._fds,
            fsync=self.config.fsync,
            index_interval_bytes=self.config.index_interval_bytes,
            producers_max=self.config.producers_max,
        )
        try:
            if self.config.fsync:
                fsync_dir(self.directory)
        except BaseException:
            segment.retire()
            segment.path.unlink(missing_ok=True)
            raise
        return segment

    def _ranges_within(self, segment: Segment) -> list[tuple[int, int]]:
        return [
            (base, end)
            for base, end in self.corrupt_ranges
            if segment.base_offset <= base < segment.next_offset
        ]

    def sync(self) -> None:
        """fdatasync the active segment (sealed ones were synced at roll). No-op if fsync=False."""
        assert not self._closed
        if self.config.fsync:
            self._segments[-1].sync()

    def delete_segments_before(self, cutoff_ms: int) -> int:
        """Retention: delete whole segments all of whose batches arrived before ``cutoff_ms``.

        Oldest first, stopping at the first newer one. An entirely old active segment is rolled
        first, so the log may become empty; it still remembers ``next_offset`` (the new empty
        segment is named by it). Returns how many segments were deleted.
        """
        assert not self._closed
        victims = self._expired(cutoff_ms)
        if not victims:
            return 0
        remaining = self._segments[len(victims) :]
        self._segments = remaining
        self.start_offset = remaining[0].base_offset
        self.corrupt_ranges = [r for r in self.corrupt_ranges if r[1] > self.start_offset]
        self.quarantined = [r for r in self.quarantined if r[1] > self.start_offset]
        if self.start_offset == self.next_offset:
            self.last_arrival_ms = 0
        for segment in victims:
            self._delete(segment, cutoff_ms)
        if self.config.fsync:
            fsync_dir(self.directory)
        return len(victims)

    def _expired(self, cutoff_ms: int) -> list[Segment]:
        segments = self._segments
        victims: list[Segment] = []
        for segment in segments[:-1]:
            if segment.arrival_max_ms >= cutoff_ms:
                return victims
            victims.append(segment)
        active = segments[-1]
        if active.size_bytes > 0 and active.arrival_max_ms < cutoff_ms:
            try:
                self._roll("retention")
            except OSError as exc:  # StorageFullError is no OSError; both leave it in place
                self._log.warning("storage.retention.roll_failed", error=str(exc))
            except StorageFullError as exc:
                self._log.warning("storage.retention.roll_failed", error=exc.message)
            else:
                victims.append(active)
        return victims

    def _delete(self, segment: Segment, cutoff_ms: int) -> None:
        segment.retire()
        for path in (segment.path, index_path(self.directory, segment.base_offset)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # left behind; a later open adopts it again, nothing lost
                self._log.error("storage.retention.unlink_failed", file=path.name, error=str(exc))
        self._log.info(
            "storage.retention.deleted",
            segment=segment.path.name,
            base_offset=segment.base_offset,
            next_offset=segment.next_offset,
            bytes=segment.size_bytes,
            arrival_max_ms=segment.arrival_max_ms,
            cutoff_ms=cutoff_ms,
            start_offset=self.start_offset,
        )

    def close(self, *, clean: bool = True) -> None:
        """Close every file; when ``clean``, sync and leave the marker for a fast next open.

        Never raises for a full disk or a failed sync: the marker is then left out, so the
        next open verifies everything (``clean`` in the log line says which happened).
        """
        if self._closed:
            return
        self._closed = True
        active = self._segments[-1]
        try:
            if clean:
                clean = self._leave_marker(active)
        finally:
            for segment in self._segments:
                segment.retire()
        self._log.info("storage.closed", clean=clean, next_offset=self.next_offset)

    def _leave_marker(self, active: Segment) -> bool:
        try:
            if self.config.fsync:
                active.sync()
            state = {
                "active_base_offset": active.base_offset,
                "active_size_bytes": active.size_bytes,
                "next_offset": self.next_offset,
            }
            write_marker(self.directory, state, fsync=self.config.fsync)
        except (OSError, SyncFailedError) as exc:
            self._log.warning("storage.close.unclean", error=str(exc))
            return False
        return True

    def quarantine(self, base: int, end: int, now_ms: int) -> Quarantined:
        """Move the damaged offsets [base, end) aside: copy their bytes to the quarantine
        folder, record the range durably, and skip it in reads from now on (quarantine.py).
        Repeating a done quarantine returns it again. Appender's thread only.

        Raises InvalidArgumentError (outside the log, overlapping another quarantined range,
        not starting and ending at the edges of damaged stretches, or holding an intact
        batch: nothing intact is ever moved aside), OSError, StorageFullError.
        """
        assert not self._closed
        for done in self._book:
            if (done.base_offset, done.next_offset) == (base, end):
                return done
            if done.base_offset < end and base < done.next_offset:
                raise InvalidArgumentError(
                    f"offsets [{base}, {end}) overlap the quarantined range "
                    f"[{done.base_offset}, {done.next_offset})"
                )
        if not self.start_offset <= base < end <= self.next_offset:
            raise InvalidArgumentError(
                f"offsets [{base}, {end}) are not in the log [{self.start_offset}, "
                f"{self.next_offset})"
            )
        stretches = self._damaged_stretches(base, end)
        chunks: list[bytes] = []
        for segment, stretch in stretches:
            with _pinned(segment):
                chunks.append(segment.read_bytes(stretch.position, stretch.end_position))
        with _full_disk_is_typed(self.directory / book.BOOK_NAME):
            name = book.keep_bytes(self.directory, base, end, chunks, fsync=self.config.fsync)
            entry = Quarantined(base, end, name, sum(map(len, chunks)), now_ms)
            entries = sorted([*self._book, entry], key=attrgetter("base_offset"))
            book.save(self.directory, entries, fsync=self.config.fsync)
        self._book = entries
        self.quarantined = [(q.base_offset, q.next_offset) for q in entries]
        return entry

    def _damaged_stretches(self, base: int, end: int) -> list[tuple[Segment, Stretch]]:
        found: list[tuple[Segment, Stretch]] = []
        offset = base
        while offset < end:
            segment = _segment_for(self._segments, offset)
            assert segment is not None  # offset >= start_offset
            try:
                with _pinned(segment):
                    stretch = segment.stretch_at(offset)
            except CorruptDataError as exc:
                raise InvalidArgumentError(
                    f"cannot locate offset {offset}: {exc.message}"
                ) from None
            if stretch.intact:
                raise InvalidArgumentError(
                    f"offsets [{stretch.base_offset}, {stretch.next_offset}) hold an intact "
                    "batch: only damaged records can be quarantined"
                )
            if stretch.base_offset != offset or stretch.next_offset > end:
                raise InvalidArgumentError(
                    f"the damaged stretch at offset {offset} is [{stretch.base_offset}, "
                    f"{stretch.next_offset}): quarantine whole damaged stretches"
                )
            found.append((segment, stretch))
            offset = stretch.next_offset
        return found

    def truncate_to(self, offset: int) -> None:
        """Cut every batch at or after ``offset`` (a batch boundary), make the cut durable, and
        close the log; open it again with ``ShardLog.open`` (which recovers from the files).

        The shard pipeline calls it after a failed fsync, with the high watermark: what lies
        past it was never acknowledged nor served, and may or may not be on disk (fsyncgate),
        so it is removed rather than trusted. Later segments are deleted; the segment holding
        ``offset`` is cut at that batch, fsynced, and named in a clean-shutdown marker so the
        next open only scans its headers. Raises OSError or SyncFailedError (the disk is still
        full or failing; nothing is closed then, and the call may be repeated).
        """
        assert not self._closed and self.start_offset <= offset <= self.next_offset
        segments = self._segments
        if self._cut is None or self._cut[0] != offset:  # a repeated call keeps its first plan
            keep = _segment_for(segments, offset) or segments[0]
            with _pinned(keep):
                self._cut = (offset, segments.index(keep), keep.position_of(offset))
        _, at, position = self._cut
        keep = segments[at]
        for segment in segments[at + 1 :]:
            segment.path.unlink(missing_ok=True)
            index_path(self.directory, segment.base_offset).unlink(missing_ok=True)
        index_path(self.directory, keep.base_offset).unlink(missing_ok=True)
        os.truncate(keep.path, position)  # by path: a sealed segment's fd is read-only
        if self.config.fsync:
            try:
                with _pinned(keep):
                    os.fsync(keep.fd)
            except OSError as exc:
                raise SyncFailedError(keep.path.name, exc) from exc
            fsync_dir(self.directory)
        marker = {"active_base_offset": keep.base_offset, "active_size_bytes": position}
        write_marker(self.directory, {**marker, "next_offset": offset}, fsync=self.config.fsync)
        self._log.warning(
            "storage.truncated",
            offset=offset,
            cut_from=self.next_offset,
            segments_deleted=len(segments) - at - 1,
        )
        self._closed = True
        for segment in segments:
            segment.retire()

    # -- readers (any thread) -------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, end_offset: int) -> list[bytes]:
        """Whole stored batches from the one containing ``offset``, below ``end_offset``.

        Stops before the total would pass ``max_bytes`` but returns at least one batch if one
        qualifies. Raises OffsetTrimmedError (offset below start_offset) or CorruptDataError
        (details base_offset, next_offset: the range to skip) for the first batch; a later bad
        batch just ends the list.
        """
        assert end_offset <= self.next_offset, (end_offset, self.next_offset)
        assert max_bytes > 0
        if offset < self.start_offset:
            raise OffsetTrimmedError(offset, self.start_offset)
        segments = self._segments
        batches: list[bytes] = []
        budget_bytes = max_bytes
        while offset < end_offset and budget_bytes > 0:
            if not self._readable(offset, batches):
                break
            segment = _segment_for(segments, offset)
            if segment is None or not segment.pin():
                if batches:
                    break
                raise OffsetTrimmedError(offset, self.start_offset)
            try:
                got, offset, at_end = segment.read(
                    offset,
                    self._stop_before(offset, end_offset),
                    budget_bytes,
                    at_least_one=not batches,
                )
            except CorruptDataError:
                if batches:  # serve what came before; the next read reports the damage
                    break
                raise
            finally:
                segment.unpin()
            batches += got
            budget_bytes -= sum(map(len, got))
            if not (got and at_end):
                break
        return batches

    def _stop_before(self, offset: int, end_offset: int) -> int:
        """``end_offset``, or the start of the next known damaged or quarantined range."""
        for ranges in (self.corrupt_ranges, self.quarantined):
            i = bisect.bisect_right(ranges, offset, key=_range_base)
            if i < len(ranges):
                end_offset = min(end_offset, ranges[i][0])
        return end_offset

    def quarantined_at(self, offset: int) -> tuple[int, int] | None:
        """The quarantined range [base, next) holding ``offset``, if any (any thread)."""
        ranges = self.quarantined
        i = bisect.bisect_right(ranges, offset, key=_range_base) - 1
        return ranges[i] if i >= 0 and ranges[i][0] <= offset < ranges[i][1] else None

    def _readable(self, offset: int, batches: list[bytes]) -> bool:
        """False (stop here) or CorruptDataError if ``offset`` lies in a known corrupt range."""
        if self.quarantined_at(offset) is not None:
            if batches:
                return False
            base, end = self.quarantined_at(offset) or (offset, offset + 1)
            raise CorruptDataError(
                f"offsets [{base}, {end}) are quarantined", base_offset=base, next_offset=end
            )
        ranges = self.corrupt_ranges
        i = bisect.bisect_right(ranges, offset, key=_range_base) - 1
        if i < 0 or not ranges[i][0] <= offset < ranges[i][1]:
            return True
        if batches:
            return False
        base, end = ranges[i]
        raise CorruptDataError(
            f"offsets [{base}, {end}) are corrupt", base_offset=base, next_offset=end
        )

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        """Base offset of the first batch with last_arrival_ms >= ``timestamp_ms``; else
        ``next_offset``."""
        end_offset = self.next_offset
        for segment in self._segments:
            if segment.arrival_max_ms < timestamp_ms or not segment.pin():
                continue
            try:
                found = segment.find_time(timestamp_ms, end_offset)
            finally:
                segment.unpin()
            if found is not None:
                return found
        return end_offset


def _segment_for(segments: tuple[Segment, ...], offset: int) -> Segment | None:
    i = bisect.bisect_right(segments, offset, key=_segment_base) - 1
    return segments[i] if i >= 0 else None


@contextmanager
def _pinned(segment: Segment) -> Iterator[None]:
    """Hold ``segment``'s descriptor open (the appender's own use; it is never retired here)."""
    pinned = segment.pin()
    assert pinned, f"{segment} was retired"
    try:
        yield
    finally:
        segment.unpin()


@contextmanager
def _full_disk_is_typed(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_DISK_ERRNOS:
            raise StorageFullError(f"disk full rolling {path.name}: {exc}") from exc
        raise


assert errno.ENOSPC in FULL_DISK_ERRNOS
