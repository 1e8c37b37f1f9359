"""Errors that only storage raises; nothing here crosses the wire.

Storage otherwise raises the shared typed errors: ``StorageFullError`` when the disk is full,
``CorruptDataError`` for bytes that fail a CRC. ``OffsetTrimmedError`` is an expected condition of
a read racing retention: the caller (the shard pipeline) maps it onto whatever the front end
answers, typically by restarting the read at ``start_offset``.
"""

from __future__ import annotations


class OffsetTrimmedError(Exception):
    """The requested offset lies below the log's start: retention deleted it."""

    def __init__(self, offset: int, start_offset: int) -> None:
        super().__init__(f"offset {offset} was trimmed; the log starts at {start_offset}")
        self.offset = offset
        self.start_offset = start_offset
