"""File names and the few raw file operations storage needs, in one place.

Everything goes through file descriptors: the appender writes with ``os.write`` at the end of the
active segment, readers use ``os.pread`` so that no thread depends on a shared file position.
Small metadata files (index, clean-shutdown marker) are written whole to a ``.tmp`` name and
renamed, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

SEGMENT_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TMP_SUFFIX = ".tmp"
MARKER_NAME = "clean-shutdown"
OFFSET_DIGITS = 20  # 2**64 - 1 has 20 decimal digits: names sort like offsets
MARKER_BYTES_MAX = 4096
FILE_MODE = 0o600  # data files and directories are the server's alone (umask may narrow more)
DIR_MODE = 0o700

_SEGMENT_NAME = re.compile(r"(\d{20})\.log")
_INDEX_NAME = re.compile(r"(\d{20})\.index")


def segment_path(directory: Path, base_offset: int) -> Path:
    return directory / f"{base_offset:0{OFFSET_DIGITS}d}{SEGMENT_SUFFIX}"


def index_path(directory: Path, base_offset: int) -> Path:
    return directory / f"{base_offset:0{OFFSET_DIGITS}d}{INDEX_SUFFIX}"


def segment_base_of(name: str) -> int | None:
    match = _SEGMENT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def index_base_of(name: str) -> int | None:
    match = _INDEX_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (regular files may write short on a full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # never for a regular file, but a loop that cannot progress must not spin
            raise OSError(errno.EIO, "os.write wrote nothing")
        view = view[written:]


def pwrite_all(fd: int, data: bytes | memoryview, position: int) -> None:
    """``os.pwrite`` at ``position`` until every byte is written (no shared file position, so
    a descriptor reopened by the fd cache needs no seek)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        if written <= 0:
            raise OSError(errno.EIO, "os.pwrite wrote nothing")
        view = view[written:]
        position += written


def pread_exact(fd: int, size: int, position: int) -> bytes:
    """Up to ``size`` bytes at ``position``; shorter only at end of file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, position)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        position += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def fsync_dir(directory: Path) -> None:
    """Make renames, creations and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes, *, fsync: bool) -> None:
    """Write ``path`` whole via a temporary name and a rename; fsync file and directory if asked."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_marker(directory: Path, state: dict[str, Any], *, fsync: bool) -> None:
    body = json.dumps(state, sort_keys=True).encode()
    assert len(body) <= MARKER_BYTES_MAX
    write_file_atomically(directory / MARKER_NAME, body, fsync=fsync)


def take_marker(directory: Path, *, fsync: bool) -> dict[str, Any] | None:
    """Read and remove the clean-shutdown marker; None if absent or unreadable.

    Removed before recovery touches anything, so a crash from here on reads as unclean.
    """
    path = directory / MARKER_NAME
    try:
        with path.open("rb") as file:
            body = file.read(MARKER_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    path.unlink()
    if fsync:
        fsync_dir(directory)
    try:
        state = json.loads(body)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None
