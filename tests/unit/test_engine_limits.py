"""The engine's shard budget, in process: creates, splits, merges and resizes past it are refused
before anything changes, and a create that fails while opening its shards leaves nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
from engine_harness import running_engine

from streamd import node_limits
from streamd.storage import ShardLog
from streamd_client.errors import LimitExceededError, ShuttingDownError


def stream_dirs(data_dir: Path) -> list[str]:
    root = data_dir / "streams-by-id"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


async def test_every_shard_change_past_the_budget_is_refused_up_front(tmp_path: Path) -> None:
    async with running_engine(tmp_path, shards_max=6) as engine:
        with pytest.raises(LimitExceededError) as info:
            await engine.create_stream("big", 7, 24)
        assert "--shards-max" in info.value.message
        assert await trio.to_thread.run_sync(stream_dirs, tmp_path) == []
        await engine.create_stream("a", 4, 24)
        with pytest.raises(LimitExceededError):
            await engine.create_stream("b", 3, 24)
        assert engine.list_streams() == ["a"]
        with pytest.raises(LimitExceededError):
            await engine.resize_stream("a", 8)  # 4 splits: 8 more shards
        await engine.split_shard("a", "shardId-000000000000")  # 4 + 2 = 6: fits
        with pytest.raises(LimitExceededError):
            await engine.split_shard("a", "shardId-000000000001")
        with pytest.raises(LimitExceededError):
            await engine.merge_shards("a", "shardId-000000000002", "shardId-000000000003")
        meta = engine.stream_meta("a")
        assert meta.status == "ACTIVE" and len(meta.shards) == 6
        assert engine.shards_held() == 6


async def test_a_create_that_fails_while_opening_leaves_no_ghost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = ShardLog.open
    opened: list[Path] = []

    def open_then_run_out(directory: Path, *args: object, **kwargs: object) -> ShardLog:
        if len(opened) == 3:
            raise OSError(errno.EMFILE, "Too many open files")
        opened.append(directory)
        return real_open(directory, *args, **kwargs)  # type: ignore[arg-type]

    async with running_engine(tmp_path) as engine:
        monkeypatch.setattr(ShardLog, "open", staticmethod(open_then_run_out))
        with pytest.raises(OSError):
            await engine.create_stream("ghost", 8, 24)
        monkeypatch.undo()
        assert engine.list_streams() == [] and engine.shards_held() == 0
        assert await engine.catalog.load_all() == []
        assert await trio.to_thread.run_sync(stream_dirs, tmp_path) == []
        await engine.create_stream("ghost", 8, 24)  # the name is free again
    async with running_engine(tmp_path) as engine:  # and the next start is a normal one
        assert engine.list_streams() == ["ghost"]


def test_the_budget_leaves_room_for_the_fixed_needs_and_names_the_limit() -> None:
    budget = node_limits.ShardBudget(
        shards_max=4096, nofile=512, connections=2048, segment_fds_max=512, io_threads_max=16
    )
    assert budget.segment_fds == 128 and budget.connection_fds == 128
    assert budget.shards_allowed == 512 - (64 + 128 + 128 + 16 + 40) == 136
    budget.check(100, 36, "x")
    with pytest.raises(LimitExceededError) as info:
        budget.check(100, 37, "creating stream 's'")
    assert "RLIMIT_NOFILE 512" in info.value.message
    assert f"ulimit -n {64 + 2048 + 512 + 16 + 40 + 137}" in info.value.message
    roomy = node_limits.ShardBudget(4096, 1 << 20, 2048, 512, 16)
    assert roomy.shards_allowed == 4096 and roomy.startup_problems(4096) == []
    assert budget.startup_problems(200)  # too many stored shards: says what to raise


async def test_a_closing_engine_answers_shutting_down_not_stream_not_found(tmp_path: Path) -> None:
    """A stopping node's streams still exist (another node serves them in a cluster): requests
    get SHUTTING_DOWN, retryable, and an idempotent producer retries its batch instead of
    taking its sequence for unwritten."""
    async with running_engine(tmp_path) as engine:
        await engine.create_stream("s", 1, 24)
        await engine.close()
        with pytest.raises(ShuttingDownError):
            engine.describe_stream("s")
