"""The replica meta file: saved atomically, a torn temporary file is ignored at load, and a
damaged real file refuses to load (never read as epoch 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.replication.meta import ReplicaMeta
from streamd.replication.metafile import META_NAME, MetaFile, MetaFileCorrupt


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    assert MetaFile(tmp_path).load() == ReplicaMeta()
    MetaFile(tmp_path).save(ReplicaMeta(7, 3, 42))
    assert MetaFile(tmp_path).load() == ReplicaMeta(7, 3, 42)


def test_a_torn_temporary_file_is_ignored_and_removed(tmp_path: Path) -> None:
    MetaFile(tmp_path).save(ReplicaMeta(5, 1, None))
    tmp = tmp_path / (META_NAME + ".tmp")
    tmp.write_bytes(b'{"meta": {"epoch": 9')  # a save that crashed before its rename
    assert MetaFile(tmp_path).load() == ReplicaMeta(5, 1, None)
    assert not tmp.exists()


def test_a_damaged_meta_file_refuses_to_load(tmp_path: Path) -> None:
    MetaFile(tmp_path).save(ReplicaMeta(5, 1, None))
    path = tmp_path / META_NAME
    path.write_bytes(path.read_bytes().replace(b'"epoch": 5', b'"epoch": 4'))
    with pytest.raises(MetaFileCorrupt):
        MetaFile(tmp_path).load()
