"""The engine's resharding, in process on real files: atomic close, re-routing, resume, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from engine_harness import running_engine

from streamd.engine import Engine
from streamd.reshard import check_shard_map
from streamd.routing import RecordIn
from streamd_client import batch as batchfmt
from streamd_client.errors import (
    InvalidArgumentError,
    LimitExceededError,
    ResourceInUseError,
    ShardNotFoundError,
)
from streamd_client.model import Position, hash_bytes_of


def record(key: str, data: bytes = b"x") -> RecordIn:
    return RecordIn(key, hash_bytes_of(key), data)


async def read_all(engine: Engine, stream: str, shard_id: str) -> list[tuple[int, str]]:
    """(offset, key) of every record in the shard, up to its high watermark."""
    out: list[tuple[int, str]] = []
    position = Position.trim_horizon()
    while True:
        result = await engine.read(stream, shard_id, position, 8 * 1024 * 1024, 0)
        for blob in result.batches:
            header = batchfmt.parse_header(blob)
            keys, _, _ = batchfmt.decode_records(blob, header)
            out += [(header.base_offset + i, k) for i, k in enumerate(keys)]
        if result.next_offset >= result.high_watermark:
            return out
        position = Position.at_offset(result.next_offset)


async def wait_active(engine: Engine, stream: str) -> None:
    with trio.fail_after(30):
        while engine.stream_meta(stream).status != "ACTIVE":  # noqa: ASYNC110 (no event to wait on)
            await trio.sleep(0.01)


async def test_split_under_concurrent_writes_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 1, 24)
        written: list[str] = []

        async def writer(prefix: str) -> None:
            for i in range(60):
                batch = [record(f"{prefix}-{i}-{j}") for j in range(20)]
                outcomes = await engine.put_records("s", batch)
                assert all(o.error is None for o in outcomes), outcomes
                written.extend(r.partition_key for r in batch)

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(writer, f"w{n}")
            await trio.sleep(0.02)
            children = await engine.split_shard("s", "shardId-000000000000")

        meta = engine.stream_meta("s")
        check_shard_map(meta)
        parent = meta.shard("shardId-000000000000")
        assert parent is not None and parent.ending_offset is not None
        assert [c.shard_id for c in meta.children_of(parent.shard_id)] == children
        stored: list[str] = []
        for shard in meta.shards:
            rows = await read_all(engine, "s", shard.shard_id)
            keys = [k for _, k in rows]
            stored += keys
            if shard.ending_offset is not None:
                assert all(offset < shard.ending_offset for offset, _ in rows)
            else:  # every record sits in the child whose range holds its hash
                for key in keys:
                    h = int.from_bytes(hash_bytes_of(key), "big")
                    assert shard.hash_key_start <= h <= shard.hash_key_end
        assert sorted(stored) == sorted(written)
        assert len(written) == 4 * 60 * 20


async def test_long_poll_on_a_parent_ends_with_its_children(tmp_path: Path) -> None:
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 2, 24)
        results = []

        async def poll() -> None:
            results.append(
                await engine.read("s", "shardId-000000000001", Position.latest(), 1024, 20_000)
            )

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.05)
                child = await engine.merge_shards(
                    "s", "shardId-000000000001", "shardId-000000000000"
                )
        (result,) = results
        assert result.shard_end and result.batches == []
        assert [c.shard_id for c in result.child_shards] == [child]
        assert result.child_shards[0].parent_shard_ids == (
            "shardId-000000000001",
            "shardId-000000000000",
        )


async def test_refusals_are_typed(tmp_path: Path) -> None:
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 3, 24)
        with pytest.raises(InvalidArgumentError, match="not adjacent"):
            await engine.merge_shards("s", "shardId-000000000000", "shardId-000000000002")
        with pytest.raises(InvalidArgumentError, match="must lie in"):
            await engine.split_shard("s", "shardId-000000000001", 5)
        with pytest.raises(ShardNotFoundError):
            await engine.split_shard("s", "shardId-000000000009")
        with pytest.raises(InvalidArgumentError, match="between 2 and 6"):
            await engine.resize_stream("s", 7)
        await engine.split_shard("s", "shardId-000000000000")
        with pytest.raises(InvalidArgumentError, match="closed"):
            await engine.split_shard("s", "shardId-000000000000")
        assert await engine.resize_stream("s", 6) > 0
        with pytest.raises(ResourceInUseError):
            await engine.split_shard("s", "shardId-000000000001")
        with pytest.raises(ResourceInUseError):
            await engine.update_retention("s", 48)
        await wait_active(engine, "s")
        assert len(engine.stream_meta("s").open_shards()) == 6
        with pytest.raises(LimitExceededError):
            await engine.update_tags("s", {f"k{i}": "v" for i in range(51)}, [])
        await engine.update_tags("s", {"team": "a", "tier": "1"}, [])
        await engine.update_tags("s", {}, ["tier"])
        assert engine.stream_meta("s").tags == {"team": "a"}


@pytest.mark.parametrize(("start", "target"), [(4, 8), (8, 4), (4, 3), (3, 5), (5, 5)])
async def test_resize_reaches_even_ranges(tmp_path: Path, start: int, target: int) -> None:
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", start, 24)
        await engine.put_records("s", [record(f"k{i}") for i in range(200)])
        await engine.resize_stream("s", target)
        await wait_active(engine, "s")
        meta = engine.stream_meta("s")
        check_shard_map(meta)
        open_shards = meta.open_shards()
        assert len(open_shards) == target
        widths = {s.hash_key_end - s.hash_key_start for s in open_shards}
        assert max(widths) - min(widths) <= 1
        total = 0
        for shard in meta.shards:
            total += len(await read_all(engine, "s", shard.shard_id))
        assert total == 200


async def test_interrupted_resize_resumes_at_start(tmp_path: Path) -> None:
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 8, 24)
        await engine.put_records("s", [record(f"k{i}") for i in range(100)])
        total = await engine.resize_stream("s", 5)
        with trio.fail_after(10):
            while (engine.stream_meta("s").reshard or {}).get("done", 0) < 1:  # noqa: ASYNC110
                await trio.sleep(0.001)
        # close() stops the resize between steps, leaving the stream UPDATING on disk
    async with running_engine(tmp_path) as engine:
        # Resumed from the store: the first run stopped part way (steps take milliseconds).
        assert engine.stream_meta("s").status == "UPDATING"
        await wait_active(engine, "s")
        meta = engine.stream_meta("s")
        check_shard_map(meta)
        assert len(meta.open_shards()) == 5
        assert total == 11  # 4 splits at the new boundaries, 7 merges across the old ones
        counts = [len(await read_all(engine, "s", s.shard_id)) for s in meta.shards]
        assert sum(counts) == 100


async def test_concurrent_reshards_on_one_stream_are_refused(tmp_path: Path) -> None:
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 4, 24)
        outcomes: list[str] = []

        async def split(shard_id: str) -> None:
            try:
                await engine.split_shard("s", shard_id)
                outcomes.append("split")
            except ResourceInUseError:
                outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(split, "shardId-000000000000")
            nursery.start_soon(split, "shardId-000000000002")
        assert sorted(outcomes) == ["refused", "split"]
        assert len(engine.stream_meta("s").open_shards()) == 5


async def test_idle_group_members_expire_on_the_group_timer(tmp_path: Path) -> None:
    """No request reaches the group after the join, yet the stored group drops the member
    (the group service's timer, run beside the engine as streamd/node.py runs it)."""
    from streamd.frontends.native.api import bind_handlers
    from streamd.groups.service import GroupService, StreamView, group_key

    async with running_engine(tmp_path) as engine, trio.open_nursery() as nursery:
        groups = GroupService(engine.catalog.store, StreamView(engine))
        nursery.start_soon(groups.run)
        await engine.create_stream("s", 2, 24)
        join = {"stream": "s", "group": "g", "member_id": "m1", "session_timeout_ms": 200}
        await bind_handlers(engine, groups)["group_join"](join)
        key = group_key("s", "g")
        stored = await engine.catalog.store.get(key)
        assert stored is not None and b"m1" in stored.value
        with trio.fail_after(5):
            while b"m1" in stored.value:
                await trio.sleep(0.1)
                stored = await engine.catalog.store.get(key)
                assert stored is not None
        nursery.cancel_scope.cancel()


async def test_interrupted_split_is_forgotten_at_start(tmp_path: Path) -> None:
    """A split whose switch never happened (UPDATING on disk, map unchanged) leaves the stream
    as it was: ACTIVE, same shards, and a new split works."""
    from dataclasses import replace

    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 2, 24)
        await engine.put_records("s", [record(f"k{i}") for i in range(50)])
        intent = {"kind": "split", "target": None, "total": 1, "done": 0}
        await engine.catalog.update(
            "s", lambda m: replace(m, status="UPDATING", reshard=intent)
        )  # as if the server died between the intent and the switch
    async with running_engine(tmp_path) as engine:
        meta = engine.stream_meta("s")
        assert meta.status == "ACTIVE" and meta.reshard is None
        assert [s.shard_id for s in meta.open_shards()] == [
            "shardId-000000000000",
            "shardId-000000000001",
        ]
        assert len(await engine.split_shard("s", "shardId-000000000001")) == 2
        total = sum([len(await read_all(engine, "s", s.shard_id)) for s in meta.shards])
        assert total == 50


async def test_closed_shards_past_retention_are_forgotten(tmp_path: Path) -> None:
    from streamd.shard import now_ms

    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 1, 24)
        await engine.put_records("s", [record(f"k{i}") for i in range(20)])
        left, right = await engine.split_shard("s", "shardId-000000000000")
        await engine.put_records("s", [record(f"n{i}") for i in range(20)])
        assert await engine.expire_closed_shards(now_ms()) == []  # within retention: kept
        later = now_ms() + 24 * 3_600_000 + 1000
        assert await engine.expire_closed_shards(later) == ["shardId-000000000000"]
        meta = engine.stream_meta("s")
        assert [s.shard_id for s in meta.shards] == [left, right]
        assert meta.shards[0].parent_shard_id == "shardId-000000000000"  # lineage kept
        assert not (engine.streams["s"].directory / "shardId-000000000000").exists()
        with pytest.raises(ShardNotFoundError):
            await engine.read("s", "shardId-000000000000", Position.trim_horizon(), 1024, 0)
        assert sum([len(await read_all(engine, "s", sid)) for sid in (left, right)]) == 20
        assert len(await engine.split_shard("s", right)) == 2  # new ids do not reuse the old
    async with running_engine(tmp_path) as engine:  # and the store agrees after a restart
        assert "shardId-000000000000" not in {s.shard_id for s in engine.stream_meta("s").shards}
