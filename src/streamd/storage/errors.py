"""Errors that only storage raises; nothing here crosses the wire.

Storage otherwise raises the shared typed errors: ``StorageFullError`` when the disk is full,
``CorruptDataError`` for bytes that fail a CRC. ``OffsetTrimmedError`` is an expected condition of
a read racing retention: the caller (the shard pipeline) maps it onto whatever the front end
answers, typically by restarting the read at ``start_offset``.
"""

from __future__ import annotations

import errno

FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class OffsetTrimmedError(Exception):
    """The requested offset lies below the log's start: retention deleted it."""

    def __init__(self, offset: int, start_offset: int) -> None:
        super().__init__(f"offset {offset} was trimmed; the log starts at {start_offset}")
        self.offset = offset
        self.start_offset = start_offset


class SyncFailedError(Exception):
    """An fsync (fdatasync) of a segment failed; ``__cause__`` is the OSError.

    Kept apart from write errors on purpose: after a failed fsync the kernel may have dropped
    the dirty pages while the page cache still serves them, and a later fsync may report
    success for data that never reached the disk (PostgreSQL's "fsyncgate"). Whatever was
    written since the last successful sync must be treated as lost; see
    ``ShardLog.discard_unsynced`` and the decision in docs/operations.md.
    """

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(f"fsync of {path} failed: {exc}")
        self.errno = exc.errno
        self.message = str(self)

    @property
    def full_disk(self) -> bool:
        """ENOSPC/EDQUOT at writeback (delayed allocation), not a device error such as EIO."""
        return self.errno in FULL_DISK_ERRNOS
