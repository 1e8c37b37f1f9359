"""The data directory layout: streams live by id, and a data dir of the by-name layout (older
versions) opens with every record, even when a migration was cut short by a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_harness import running_engine

from streamd import layout
from streamd.engine import Engine
from streamd.routing import RecordIn
from streamd_client import batch as batchfmt
from streamd_client.errors import InternalError
from streamd_client.model import Position, hash_bytes_of

# (STREAM_ID could not exist beside "." in the old layout: its marker file had that name.)
NAMES = {"a": 2, ".": 1, "..": 1, "b": 1}


async def contents(engine: Engine, stream: str) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    for shard in engine.stream_meta(stream).shards:
        result = await engine.read(stream, shard.shard_id, Position.trim_horizon(), 1 << 22, 0)
        records: list[tuple[int, bytes]] = []
        for blob in result.batches:
            header = batchfmt.parse_header(blob)
            _, _, datas = batchfmt.decode_records(blob, header)
            records += [(header.base_offset + i, d) for i, d in enumerate(datas)]
        out[shard.shard_id] = records
    return out


def to_by_name_layout(data_dir: Path, ids: dict[str, str], half_done: str) -> None:
    """Lay the files out as versions before the by-id layout did: ``<data>/streams/<name>/``
    (``.`` and ``..`` are the streams dir and the data dir) with a STREAM_ID file. The shards of
    ``half_done`` but one stay in the new place, as a crash during the migration leaves them."""
    for name, stream_id in ids.items():
        new = layout.stream_dir(data_dir, stream_id)
        old = Path(os.path.normpath(data_dir / "streams" / name))
        old.mkdir(parents=True, exist_ok=True)
        (old / "STREAM_ID").write_text(stream_id)
        shard_dirs = sorted(new.iterdir())
        for shard_dir in shard_dirs[1:] if name == half_done else shard_dirs:
            shard_dir.rename(old / shard_dir.name)
        if name != half_done:
            new.rmdir()


def old_layout_left(data_dir: Path) -> list[str]:
    """What is left of the by-name layout: ``streams/``, and ``..``'s files in the data dir."""
    return [p.name for p in data_dir.iterdir() if p.name in ("streams", "STREAM_ID")] + [
        p.name for p in data_dir.glob("shardId-*")
    ]


async def test_a_by_name_data_dir_opens_with_every_record(tmp_path: Path) -> None:
    async with running_engine(tmp_path) as engine:
        for name, shards in NAMES.items():
            await engine.create_stream(name, shards, 24)
            records = [
                RecordIn(f"k{i}", hash_bytes_of(f"k{i}"), f"{name}{i}".encode()) for i in range(30)
            ]
            await engine.put_records(name, records)
        before = {name: await contents(engine, name) for name in NAMES}
        ids = {name: engine.stream_meta(name).stream_id for name in NAMES}
    to_by_name_layout(tmp_path, ids, half_done="a")
    assert (tmp_path / "streams" / "a" / "STREAM_ID").exists()

    async with running_engine(tmp_path) as engine:
        assert {name: await contents(engine, name) for name in NAMES} == before
        for name in NAMES:
            (outcome,) = await engine.put_records(name, [RecordIn("k", hash_bytes_of("k"), b"n")])
            assert outcome.error is None
    assert old_layout_left(tmp_path) == []  # migrated whole: the old root is gone
    async with running_engine(tmp_path) as engine:  # and it stays migrated
        for name in NAMES:
            assert sum(map(len, (await contents(engine, name)).values())) == 31


def test_ids_of_another_shape_never_become_paths(tmp_path: Path) -> None:
    for bad in ["..", ".", "../x", "ABCDEF0123456789", "0123456789abcde", "0123456789abcdef/"]:
        with pytest.raises(InternalError):
            layout.stream_dir(tmp_path, bad)
    for bad in ["..", "shardId-1", "shardId-000000000000/..", "x"]:
        with pytest.raises(InternalError):
            layout.shard_dir(tmp_path, bad)
    assert layout.stream_dir(tmp_path, "0123456789abcdef").parent == tmp_path / "streams-by-id"


def test_interrupted_deletions_are_finished_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / "trash" / "0123456789abcdef-1-2" / "shardId-000000000000"
    leftover.mkdir(parents=True)
    (leftover / "00000000000000000000.log").write_bytes(b"x" * 100)
    layout.empty_trash(tmp_path)
    assert list((tmp_path / "trash").iterdir()) == []
