"""Quarantined ranges: damaged offsets of a shard moved aside by an operator, so reads go on.

A range is quarantined only if every batch in it is damaged (``Segment.stretch_at`` says which
bytes hold it and whether they pass both CRCs): intact records are never moved aside. The
damaged bytes are copied, as they are on disk, to ``quarantine/<base>-<next>.bin`` under the
shard's directory (for forensics: the segment files stay append-only, so the bytes also stay in
their segment until retention deletes it), and the range is recorded in ``quarantine.json``,
written whole through a temporary name and fsynced, so it survives a restart. Readers then skip
it: a read starting inside it continues at its end and says so (docs/operations.md).

Blocking file I/O only, on the shard's appender thread (like appends and retention).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from .files import OFFSET_DIGITS, fsync_dir, write_all, write_file_atomically

BOOK_NAME: Final = "quarantine.json"
DIR_NAME: Final = "quarantine"
BOOK_BYTES_MAX: Final = 1 << 20  # ~5,000 ranges; refused beyond (nobody needs that many)
BOOK_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One range moved aside: offsets [base_offset, next_offset), and where its bytes went."""

    base_offset: int
    next_offset: int
    file: str  # relative to the shard directory
    size_bytes: int
    quarantined_ms: int


def load(directory: Path) -> list[Quarantined]:
    """The ranges recorded for a shard directory, sorted; [] if none.

    Raises OSError, or ValueError for a book that does not parse (never guessed around: the
    shard would otherwise serve an error where an operator already decided to skip).
    """
    path = directory / BOOK_NAME
    try:
        with path.open("rb") as file:
            body = file.read(BOOK_BYTES_MAX + 1)
    except FileNotFoundError:
        return []
    if len(body) > BOOK_BYTES_MAX:
        raise ValueError(f"{path} is larger than {BOOK_BYTES_MAX} bytes")
    doc = json.loads(body)
    if not isinstance(doc, dict) or doc.get("version") != BOOK_VERSION:
        raise ValueError(f"{path}: unknown format")
    entries = [_entry(raw, path) for raw in doc.get("ranges", [])]
    return sorted(entries, key=lambda q: q.base_offset)


def _entry(raw: Any, path: Path) -> Quarantined:
    try:
        entry = Quarantined(**raw)
    except TypeError as exc:
        raise ValueError(f"{path}: malformed range {raw!r:.200}") from exc
    if not (
        all(isinstance(v, int) for v in (entry.base_offset, entry.next_offset, entry.size_bytes))
        and 0 <= entry.base_offset < entry.next_offset
        and isinstance(entry.file, str)
    ):
        raise ValueError(f"{path}: malformed range {raw!r:.200}")
    return entry


def save(directory: Path, entries: list[Quarantined], *, fsync: bool) -> None:
    """Replace the book atomically (temporary name, rename, fsync of file and directory)."""
    doc = {"version": BOOK_VERSION, "ranges": [asdict(e) for e in entries]}
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    if len(body) > BOOK_BYTES_MAX:
        raise ValueError(f"too many quarantined ranges for {BOOK_NAME} ({len(entries)})")
    write_file_atomically(directory / BOOK_NAME, body, fsync=fsync)


def keep_bytes(directory: Path, base: int, end: int, chunks: list[bytes], *, fsync: bool) -> str:
    """Write the damaged bytes of [base, end) to the quarantine folder; returns the file name
    relative to ``directory``. A repeated call (after a crash) overwrites the same file."""
    folder = directory / DIR_NAME
    folder.mkdir(mode=0o700, exist_ok=True)
    name = f"{base:0{OFFSET_DIGITS}d}-{end:0{OFFSET_DIGITS}d}.bin"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if fsync:
        fsync_dir(folder)
    return f"{DIR_NAME}/{name}"
