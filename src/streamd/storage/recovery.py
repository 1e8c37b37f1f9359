"""Opening a shard directory: take stock of the files, then rebuild every segment's state.

How much is checked depends on how the last process ended (the clean-shutdown marker):

  previous shutdown        | sealed segment                       | last (active) segment
  -------------------------+--------------------------------------+-----------------------------
  clean, verify_all=False  | valid .index: load it, no scan;      | scan headers
                           | else scan headers, rewrite .index    |
  unclean or verify_all    | verify every header and payload CRC, | verify every header and
                           | rewrite .index                       | payload CRC

Each scan applies the decision table in ``scan.py``. The marker counts only if it names the
active segment and its exact size: a marker left behind by a copy or an edit reads as unclean.
It is removed before anything else is touched, so a crash during or after recovery reads as
unclean next time. Leftover ``.tmp`` files and ``.index`` files without a segment are removed.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .config import LogConfig, RecoveryReport
from .fdcache import FdCache
from .files import (
    DIR_MODE,
    MARKER_NAME,
    TMP_SUFFIX,
    fsync_dir,
    index_base_of,
    index_path,
    segment_base_of,
    segment_path,
    take_marker,
)
from .index_file import SegmentSummary, read_index, restore, summarize, write_index
from .producers import ProducerTable
from .quarantine import BOOK_NAME as QUARANTINE_BOOK
from .quarantine import DIR_NAME as QUARANTINE_DIR
from .scan import ScanResult, scan_segment
from .segment import Segment

log = structlog.get_logger(__name__)


@dataclass
class Recovered:
    segments: list[Segment]  # Invariant: non-empty, contiguous bases, the last is active
    producers: ProducerTable
    report: RecoveryReport
    fds: FdCache  # where the segments' descriptors are counted


def recover(
    directory: Path, config: LogConfig, *, verify_all: bool, fds: FdCache | None = None
) -> Recovered:
    """Recover ``directory`` (created if missing). Raises OSError if files cannot be opened.

    Each segment's file is open only while it is scanned (then the fd cache may close it), so
    opening a shard with many segments needs one descriptor at a time."""
    logger = log.bind(directory=str(directory))
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    marker = take_marker(directory, fsync=config.fsync)
    bases = _inventory(directory, logger)
    clean = _marker_matches(marker, directory, bases, logger)
    report = RecoveryReport(clean=clean)
    recovered = Recovered(
        [], ProducerTable(config.producers_max), report, FdCache() if fds is None else fds
    )
    try:
        for i, base in enumerate(bases):
            limit = bases[i + 1] if i + 1 < len(bases) else None
            _recover_one(
                directory, base, limit, config, clean and not verify_all, recovered, logger
            )
        if not bases:
            recovered.segments.append(_create_first(directory, config, recovered.fds))
    except BaseException:
        for segment in recovered.segments:
            segment.retire()
        raise
    report.segments = len(recovered.segments)
    logger.info(
        "storage.recovery.done",
        segments=report.segments,
        batches=report.batches,
        truncated_bytes=report.truncated_bytes,
        corrupt_ranges=report.corrupt_ranges,
        clean=clean,
        verified_payloads=verify_all or not clean,
    )
    return recovered


def _inventory(directory: Path, logger: Any) -> list[int]:
    """Sorted segment base offsets; removes leftovers of interrupted writes and deletions."""
    bases: list[int] = []
    indexes: list[tuple[int, Path]] = []
    for path in directory.iterdir():
        if (base := segment_base_of(path.name)) is not None:
            bases.append(base)
        elif (base := index_base_of(path.name)) is not None:
            indexes.append((base, path))
        elif path.name.endswith(TMP_SUFFIX):
            _remove_stray(path, "interrupted write", logger)
        elif path.name not in (MARKER_NAME, QUARANTINE_BOOK, QUARANTINE_DIR):
            logger.warning("storage.recovery.unknown_file", file=path.name)
    present = set(bases)
    for base, path in indexes:
        if base not in present:
            _remove_stray(path, "index without segment", logger)
    return sorted(bases)


def _remove_stray(path: Path, reason: str, logger: Any) -> None:
    path.unlink(missing_ok=True)
    logger.info("storage.recovery.stray_file_removed", file=path.name, reason=reason)


def _marker_matches(
    marker: dict[str, Any] | None, directory: Path, bases: list[int], logger: Any
) -> bool:
    if marker is None:
        return False
    if bases and marker.get("active_base_offset") == bases[-1]:
        size = segment_path(directory, bases[-1]).stat().st_size
        if marker.get("active_size_bytes") == size:
            return True
    logger.warning("storage.recovery.marker_mismatch", marker=marker, segments=len(bases))
    return False


def _recover_one(
    directory: Path,
    base: int,
    limit: int | None,
    config: LogConfig,
    trust_index: bool,
    recovered: Recovered,
    logger: Any,
) -> None:
    segment = Segment(
        segment_path(directory, base),
        base,
        fds=recovered.fds,
        writable=limit is None,
        fsync=config.fsync,
        index_interval_bytes=config.index_interval_bytes,
        producers_max=config.producers_max,
    )
    recovered.segments.append(segment)  # retired by recover() if anything below raises
    pinned = segment.pin()
    assert pinned
    try:
        _rebuild(directory, segment, limit, config, trust_index, recovered, logger)
    finally:
        segment.unpin()


def _rebuild(
    directory: Path,
    segment: Segment,
    limit: int | None,
    config: LogConfig,
    trust_index: bool,
    recovered: Recovered,
    logger: Any,
) -> None:
    """One segment's state from its index or a scan; the caller pins the segment."""
    if limit is not None and trust_index:
        summary = _usable_index(directory, segment, limit, logger)
        if summary is not None:
            restore(segment, summary)
            _account(recovered, segment, ScanResult(list(summary.corrupt_ranges)))
            _forget_summary(segment)
            return
    result = scan_segment(
        segment,
        limit=limit,
        verify_payloads=not trust_index,
        fsync=config.fsync,
        logger=logger,
    )
    _account(recovered, segment, result)
    if limit is not None:
        _rewrite_index(directory, segment, result, logger)
        _forget_summary(segment)


def _usable_index(
    directory: Path, segment: Segment, limit: int, logger: Any
) -> SegmentSummary | None:
    summary = read_index(index_path(directory, segment.base_offset))
    file_bytes = os.fstat(segment.fd).st_size
    if summary is not None and _consistent(summary, segment.base_offset, limit, file_bytes):
        for base, end in summary.corrupt_ranges:
            logger.error(
                "storage.recovery.corrupt_range",
                segment=segment.path.name,
                base_offset=base,
                next_offset=end,
                case="recorded_in_index",
            )
        return summary
    logger.info(
        "storage.recovery.index_rebuilt",
        segment=segment.path.name,
        reason="missing or invalid" if summary is None else "does not match the segment",
    )
    return None


def _consistent(summary: SegmentSummary, base: int, limit: int, file_bytes: int) -> bool:
    entries = summary.entries
    return (
        summary.base_offset == base
        and summary.next_offset == limit
        and summary.size_bytes == file_bytes
        and (not entries or entries[0].offset >= base)
        and all(
            a.offset < b.offset and a.position < b.position for a, b in itertools.pairwise(entries)
        )
        and all(entry.position < file_bytes for entry in entries)
        and all(base <= lo < hi <= limit for lo, hi in summary.corrupt_ranges)
    )


def _rewrite_index(directory: Path, segment: Segment, result: ScanResult, logger: Any) -> None:
    try:
        write_index(
            index_path(directory, segment.base_offset), summarize(segment, result.corrupt_ranges)
        )
    except OSError as exc:  # the index only saves time at the next clean start
        logger.warning(
            "storage.recovery.index_write_failed", segment=segment.path.name, error=str(exc)
        )


def _account(recovered: Recovered, segment: Segment, result: ScanResult) -> None:
    report = recovered.report
    report.batches += segment.batches
    report.truncated_bytes += result.truncated_bytes
    report.corrupt_ranges.extend(result.corrupt_ranges)
    recovered.producers.extend(segment.producers.ordered())


def _forget_summary(segment: Segment) -> None:
    segment.producers.clear()  # a sealed segment's summary lives in its .index file now


def _create_first(directory: Path, config: LogConfig, fds: FdCache) -> Segment:
    segment = Segment.create(
        directory,
        0,
        fds=fds,
        fsync=config.fsync,
        index_interval_bytes=config.index_interval_bytes,
        producers_max=config.producers_max,
    )
    if config.fsync:
        fsync_dir(directory)
    return segment
