"""Where a stream's files live in the data directory: by its immutable id, never by its name.

A stream name is user input (``[a-zA-Z0-9_.-]{1,128}``, so ``.``, ``..`` and ``STREAM_ID`` are
legal, as in Kinesis); used as a path it named the streams directory itself, the data dir, or an
internal file, and deleting ``.`` removed every stream's records. So every path here is built
from values the server made: the stream id (16 hex digits, one per incarnation) and the shard id
(``shardId-`` and 12 digits), both checked against their exact shape before they touch a path:

    <data>/streams-by-id/<stream_id>/<shard_id>/    a shard's segment files (storage/)
    <data>/trash/<stream_id>[-<shard_id>]-<ms>-<pid> a deletion in progress (renamed, then removed)

Group names, consumer names and tags live only in the metadata store; the iterator secret has a
fixed file name. Nothing else derived from a client reaches the file system.

Migration from the by-name layout (``<data>/streams/<name>/`` with a ``STREAM_ID`` file naming
the incarnation): at start, for each stream in the metadata whose old directory holds its id,
each shard directory is renamed into the new place (one atomic rename each; a crash in between
is finished at the next start, the ``STREAM_ID`` file going last), so an existing data dir opens
with every record and sequence number. For the names that were never real directories (``.`` is
``<data>/streams`` itself, ``..`` is ``<data>``) only the stream's own shard directories are moved.

Blocking file operations only; the engine calls them from a worker thread.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import structlog

from streamd_client.errors import InternalError

from .storage.files import DIR_MODE, fsync_dir

log = structlog.get_logger(__name__)

STREAMS_DIR = "streams-by-id"
TRASH_DIR = "trash"
LEGACY_STREAMS_DIR = "streams"  # the by-name layout, migrated away at start
LEGACY_MARKER = "STREAM_ID"
_STREAM_ID = re.compile(r"[0-9a-f]{16}")
_SHARD_ID = re.compile(r"shardId-[0-9]{12}")
_MARKER_BYTES_MAX = 64


def stream_dir(data_dir: Path, stream_id: str) -> Path:
    """The directory of one stream incarnation. Raises InternalError for an id of another shape
    (metadata the server did not write): it must never become a path."""
    if not _STREAM_ID.fullmatch(stream_id):
        raise InternalError(f"stream id {stream_id!r:.40} is not 16 hex digits")
    return data_dir / STREAMS_DIR / stream_id


def shard_dir(directory: Path, shard_id: str) -> Path:
    """A shard's directory inside its stream's. Raises InternalError for a malformed id."""
    if not _SHARD_ID.fullmatch(shard_id):
        raise InternalError(f"shard id {shard_id!r:.40} is not shardId-NNNNNNNNNNNN")
    return directory / shard_id


def make_dir(directory: Path) -> None:
    """Create ``directory`` and missing parents, each 0700 (the data is nobody else's;
    ``Path.mkdir(parents=True)`` would give the parents the umask's mode)."""
    if directory.is_dir():
        return
    make_dir(directory.parent)
    directory.mkdir(mode=DIR_MODE, exist_ok=True)


def remove_dir(directory: Path, trash: Path, label: str) -> None:
    """Rename into the trash (atomic, so a crash never leaves half a stream), then delete."""
    if not directory.exists():
        return
    make_dir(trash)
    target = trash / f"{label}-{time.time_ns() // 1_000_000}-{os.getpid()}"
    directory.rename(target)
    fsync_dir(directory.parent)
    shutil.rmtree(target, ignore_errors=True)


def empty_trash(data_dir: Path) -> None:
    """Finish deletions a crash cut short (their directories were renamed into the trash)."""
    trash = data_dir / TRASH_DIR
    if not trash.is_dir():
        return
    for entry in trash.iterdir():
        shutil.rmtree(entry, ignore_errors=True)
        log.info("storage.trash.emptied", entry=entry.name)


def adopt_by_name_dir(data_dir: Path, name: str, stream_id: str, shard_ids: Iterable[str]) -> int:
    """Move a stream's shard directories from the by-name layout to the by-id one; returns how
    many moved. A directory whose ``STREAM_ID`` names another incarnation is left alone."""
    legacy = Path(os.path.normpath(data_dir / LEGACY_STREAMS_DIR / name))
    marker = legacy / LEGACY_MARKER
    try:
        with marker.open("rb") as file:
            found = file.read(_MARKER_BYTES_MAX).decode("ascii", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return 0
    if found != stream_id:
        return 0
    target = stream_dir(data_dir, stream_id)
    make_dir(target)
    moved = 0
    for shard_id in shard_ids:
        source, destination = shard_dir(legacy, shard_id), shard_dir(target, shard_id)
        if not source.is_dir():
            continue
        if destination.exists():  # never merge two logs: leave the old one for an operator
            log.error("storage.layout.conflict", stream=name, shard_id=shard_id)
            continue
        source.rename(destination)
        moved += 1
    fsync_dir(target)
    marker.unlink()  # last: until here a crash resumes the move at the next start
    fsync_dir(legacy)
    if name not in (".", ".."):  # its own directory (the others are the streams dir, the data dir)
        try:
            legacy.rmdir()
        except OSError:
            log.warning("storage.layout.legacy_leftover", directory=str(legacy))
    log.info("storage.layout.migrated", stream=name, stream_id=stream_id, shards=moved)
    return moved


def retire_by_name_root(data_dir: Path) -> None:
    """After migration: remove ``<data>/streams`` if nothing is left in it, else say what is."""
    root = data_dir / LEGACY_STREAMS_DIR
    if not root.is_dir():
        return
    left = sorted(p.name for p in root.iterdir())
    if left:
        log.warning("storage.layout.legacy_leftover", directory=str(root), entries=left[:20])
        return
    root.rmdir()
    fsync_dir(data_dir)
