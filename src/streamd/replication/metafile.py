"""A replica's ``ReplicaMeta`` on disk: one small file, replaced atomically and durably.

``save`` writes the whole file under a temporary name, fsyncs it, renames it over the real name
and fsyncs the directory (storage/files.py ``write_file_atomically``): a crash leaves the old
file or the new one, never half of one, and once ``save`` returns the new one survives a power
loss. That is what fencing rests on: a replica that answered ``FenceAck(E)`` must refuse epoch
E-1 after any restart.

``load`` reads only the real name. A temporary file left by a crash mid-save (torn or whole) is
ignored and removed: its rename never happened, so the save it belongs to never returned and
nothing was answered on its strength. A missing file is a new replica (``ReplicaMeta()``).

The body is JSON with a CRC32C of its canonical form. A file that exists but does not decode or
fails its CRC raises ``MetaFileCorrupt``: the replica cannot know the highest epoch it promised,
and starting from epoch 0 would let a deposed leader's appends through, so the shard must not
start on this node (an operator, or re-replication, replaces the replica).

Blocking calls: the driver makes them on the event loop. A save is two fsyncs (about a
millisecond on this machine's disk) and happens only on epoch changes, truncations and repairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import crc32c

from ..storage.files import TMP_SUFFIX, fsync_dir, write_file_atomically
from .meta import ReplicaMeta

META_NAME: Final = "replica-meta.json"
META_BYTES_MAX: Final = 4096


class MetaFileCorrupt(Exception):
    """The replica meta file exists but cannot be trusted (undecodable or failing its CRC)."""


def _canonical(meta: ReplicaMeta) -> bytes:
    fields = {"epoch": meta.epoch, "generation": meta.generation, "repair_to": meta.repair_to}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class MetaFile:
    """``directory/replica-meta.json``; ``fsync=False`` only for tests that do not need it."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.path = directory / META_NAME
        self.fsync = fsync

    def save(self, meta: ReplicaMeta) -> None:
        body = _canonical(meta)
        data = json.dumps({"meta": json.loads(body), "crc": crc32c.crc32c(body)}).encode()
        write_file_atomically(self.path, data, fsync=self.fsync)

    def load(self) -> ReplicaMeta:
        """The saved meta, or ``ReplicaMeta()`` if none was ever saved. Raises MetaFileCorrupt."""
        tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        if tmp.exists():  # a save that crashed before its rename: it never counted
            tmp.unlink()
            if self.fsync:
                fsync_dir(self.path.parent)
        try:
            with self.path.open("rb") as file:
                data = file.read(META_BYTES_MAX + 1)
        except FileNotFoundError:
            return ReplicaMeta()
        return _decode(data, self.path)


def _decode(data: bytes, path: Path) -> ReplicaMeta:
    try:
        doc = json.loads(data)
        fields = doc["meta"]
        epoch, generation, repair_to = fields["epoch"], fields["generation"], fields["repair_to"]
        crc = doc["crc"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MetaFileCorrupt(f"{path}: undecodable ({exc})") from None
    if not all(type(v) is int and v >= 0 for v in (epoch, generation, crc)) or not (
        repair_to is None or (type(repair_to) is int and repair_to >= 0)
    ):
        raise MetaFileCorrupt(f"{path}: a field is out of range")
    meta = ReplicaMeta(epoch, generation, repair_to)
    if crc32c.crc32c(_canonical(meta)) != crc:
        raise MetaFileCorrupt(f"{path}: CRC mismatch")
    return meta
