"""A seal made for another node's reshard step (Engine.seal_shard, cluster mode) cannot outlive
that node: when its hold expires the sealing node decides on the catalog; and the follower's
copy of the catalog never takes the engine back behind its own write. In process, on real
files, with a locator that says this node leads every shard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from streamd.catalog import StreamMeta
from streamd.cluster import reshard_fence as fence
from streamd.config import ServerConfig
from streamd.engine import Engine, RecordIn
from streamd.meta.sqlite import SqliteMetaStore
from streamd.reshard import Step, apply
from streamd.routing import LOCAL, Location
from streamd_client.errors import (
    InvalidArgumentError,
    MetadataUnavailableError,
    ShardClosedError,
)
from streamd_client.model import hash_bytes_of

PARENT = "shardId-000000000000"
HOLD_MS = 300


class AllHere:
    """This node ("node1") leads every shard; "node2" is live too."""

    def locate(self, stream: str, shard_id: str) -> Location:
        return LOCAL

    def node_addresses(self) -> dict[str, tuple[str, str]]:
        return {"node1": ("127.0.0.1:1", ""), "node2": ("127.0.0.1:2", "")}

    def self_node(self) -> tuple[str, str]:
        return ("node1", "127.0.0.1:1")


class FlakyStore(SqliteMetaStore):
    """SQLite, except that reads fail while ``away`` (etcd unreachable)."""

    away = False

    async def get(self, key: str) -> Any:
        if self.away:
            raise MetadataUnavailableError("etcd is away (test)")
        return await super().get(key)


@asynccontextmanager
async def cluster_engine(data_dir: Path) -> AsyncIterator[tuple[Engine, FlakyStore]]:
    store = FlakyStore(data_dir / "meta.sqlite3")
    engine = Engine(ServerConfig(data_dir=data_dir), store, locator=AllHere())
    engine._seal_holds.retry_s = 0.1
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        try:
            yield engine, store
        finally:
            store.away = False
            await engine.close()
            nursery.cancel_scope.cancel()
    await store.aclose()


async def begin_elsewhere(engine: Engine, runner: str = "node2") -> str:
    """Mark stream "s" UPDATING by a split that ``runner`` runs; returns the reshard id."""
    progress = fence.begin_progress({"kind": "split", "target": None, "total": 1}, runner)
    await engine.catalog.update("s", lambda m: replace(m, status="UPDATING", reshard=progress))
    return str(progress["id"])


def sealed(engine: Engine, shard_id: str = PARENT) -> bool:
    pipeline = engine.streams["s"].pipelines[shard_id]
    try:
        write = pipeline.enqueue_records(["k"], [hash_bytes_of("k")], [b"x"])
    except ShardClosedError:
        return True
    del write
    return False


async def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 (no event to wait on)
            await trio.sleep(0.01)


async def test_an_expired_hold_fences_the_step_then_unseals(tmp_path: Path) -> None:
    async with cluster_engine(tmp_path) as (engine, _):
        await engine.create_stream("s", 1, 24)
        reshard_id = await begin_elsewhere(engine)
        token = fence.new_token(reshard_id)
        started = trio.current_time()
        ending = await engine.seal_shard("s", PARENT, hold_ms=HOLD_MS, token=token)
        assert ending == 0 and sealed(engine)
        await wait_for(lambda: not sealed(engine))
        assert trio.current_time() - started >= HOLD_MS / 1000
        meta = await engine.catalog.get("s")
        assert meta is not None and meta.reshard is not None
        assert token in meta.reshard["released"]
        with pytest.raises(fence.SealReleasedError):  # the runner's switch, if it comes now
            fence.check_switch(meta, reshard_id, "node2", token)
        outcomes = await engine.put_records("s", [RecordIn("k", hash_bytes_of("k"), b"x")])
        assert outcomes[0].error is None


async def test_a_hold_that_expires_after_the_switch_keeps_the_shard_sealed(
    tmp_path: Path,
) -> None:
    async with cluster_engine(tmp_path) as (engine, _):
        await engine.create_stream("s", 1, 24)
        await engine.put_records("s", [RecordIn("k", hash_bytes_of("k"), b"x")])
        reshard_id = await begin_elsewhere(engine)
        token = fence.new_token(reshard_id)
        ending = await engine.seal_shard("s", PARENT, hold_ms=HOLD_MS, token=token)
        assert ending == 1

        def switch(meta: StreamMeta) -> StreamMeta:  # the runner's switch, done in the catalog
            fence.check_switch(meta, reshard_id, "node2", token)
            new = apply(meta, Step("split", (PARENT,), 2**127), (ending,))
            return replace(new, status="ACTIVE", reshard=None)

        switched = await engine.catalog.update("s", switch)
        await trio.sleep(HOLD_MS / 1000 + 0.3)  # the hold expired meanwhile
        assert sealed(engine)  # never unsealed behind a switch that applied
        # What the follower does (its mirror holds the switch).
        await engine.apply_catalog("s", switched, as_of=engine.catalog.written["s"])
        parent = engine.streams["s"].pipelines[PARENT]
        assert parent.shard.ending_offset == 1 and parent.high_watermark == 1
        assert len(engine._seal_holds) == 0


async def test_while_the_catalog_does_not_answer_the_seal_stays(tmp_path: Path) -> None:
    async with cluster_engine(tmp_path) as (engine, store):
        await engine.create_stream("s", 1, 24)
        token = fence.new_token(await begin_elsewhere(engine))
        await engine.seal_shard("s", PARENT, hold_ms=HOLD_MS, token=token)
        store.away = True
        await trio.sleep(HOLD_MS / 1000 + 0.5)
        assert sealed(engine)  # unavailable for writes, never inconsistent
        store.away = False
        await wait_for(lambda: not sealed(engine))


async def test_an_unseal_ends_only_the_seal_of_its_token(tmp_path: Path) -> None:
    async with cluster_engine(tmp_path) as (engine, _):
        await engine.create_stream("s", 1, 24)
        reshard_id = await begin_elsewhere(engine)
        first, second = fence.new_token(reshard_id), fence.new_token(reshard_id)
        await engine.seal_shard("s", PARENT, hold_ms=60_000, token=first)
        await engine.seal_shard("s", PARENT, hold_ms=60_000, token=second)  # a retried step
        assert not engine.unseal_shard("s", PARENT, token=first)
        assert sealed(engine)
        assert engine.unseal_shard("s", PARENT, token=second)
        assert not sealed(engine)
        assert len(engine._seal_holds) == 0


async def test_a_hold_after_the_reshard_ended_unseals_without_writing(tmp_path: Path) -> None:
    async with cluster_engine(tmp_path) as (engine, _):
        await engine.create_stream("s", 1, 24)
        token = fence.new_token(await begin_elsewhere(engine))
        await engine.seal_shard("s", PARENT, hold_ms=HOLD_MS, token=token)
        ended = await engine.catalog.update(
            "s", lambda m: replace(m, status="ACTIVE", reshard=None)
        )
        await wait_for(lambda: not sealed(engine))
        assert await engine.catalog.get("s") == ended


async def test_seal_shard_is_refused_outside_a_cluster_and_out_of_bounds(
    tmp_path: Path,
) -> None:
    async with cluster_engine(tmp_path) as (engine, _):
        await engine.create_stream("s", 1, 24)
        for hold_ms in (0, 60_001):
            with pytest.raises(InvalidArgumentError):
                await engine.seal_shard("s", PARENT, hold_ms=hold_ms, token="t")
        with pytest.raises(InvalidArgumentError):
            await engine.seal_shard("s", PARENT, hold_ms=100, token="t" * 65)
    embedded_dir = tmp_path / "embedded"
    embedded_dir.mkdir()
    embedded_store = SqliteMetaStore(embedded_dir / "meta.sqlite3")
    embedded = Engine(ServerConfig(data_dir=embedded_dir), embedded_store)
    async with trio.open_nursery() as nursery:
        await nursery.start(embedded.run)
        await embedded.create_stream("s", 1, 24)
        with pytest.raises(InvalidArgumentError):
            await embedded.seal_shard("s", PARENT, hold_ms=100, token="t")
        await embedded.close()
        nursery.cancel_scope.cancel()
    await embedded_store.aclose()


async def test_a_catalog_copy_older_than_this_nodes_write_is_not_applied(tmp_path: Path) -> None:
    async with cluster_engine(tmp_path) as (engine, _):
        await engine.create_stream("s", 1, 24)
        created = engine.catalog.written["s"]
        old = await engine.catalog.get("s")
        assert old is not None
        await engine.update_retention("s", 48)
        # The follower read its mirror before this node's write and applies it only now (it
        # waited for the stream's lock meanwhile): the engine keeps its own, newer document.
        await engine.apply_catalog("s", old, as_of=created)
        assert engine.describe_stream("s")["retention_hours"] == 48
        newer = replace(old, retention_hours=72)  # a later document (as of a later revision)
        await engine.apply_catalog("s", newer, as_of=engine.catalog.written["s"] + 1)
        assert engine.describe_stream("s")["retention_hours"] == 72
