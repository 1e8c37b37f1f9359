"""The on-demand scaler's loop (streamd/scaler.py) over a real engine on a virtual clock: a hot
shard split, cold neighbours merged, PROVISIONED streams left alone, gone shards' meters
forgotten."""

from __future__ import annotations

from pathlib import Path

import trio

from streamd.clock import VirtualClock
from streamd.config import ServerConfig
from streamd.engine import Engine
from streamd.meta.sqlite import SqliteMetaStore
from streamd.routing import RecordIn
from streamd.scaler import OnDemandScaler
from streamd.scaling import ScalingPolicy

POLICY = ScalingPolicy(shards_min=2, shards_max=5, hot_for_s=1, cold_for_s=10, cooldown_s=0)


def _records(count: int, hash_key: int = 0) -> list[RecordIn]:
    return [RecordIn("k", hash_key.to_bytes(16, "big"), b"x") for _ in range(count)]


def _open(engine: Engine, name: str) -> list[str]:
    return [s.shard_id for s in engine.stream_meta(name).open_shards()]


async def test_the_scaler_splits_a_hot_shard_then_merges_cold_ones(tmp_path: Path) -> None:
    clock = VirtualClock()
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    engine = Engine(ServerConfig(data_dir=tmp_path, fsync="never"), store, clock=clock)
    scaler = OnDemandScaler(engine, POLICY, interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.create_stream("hot", 4, 24, mode="ON_DEMAND")
        await engine.create_stream("fixed", 4, 24)
        for name in ("hot", "fixed"):  # 3,000 records at once on shard 0: 1.5 x 1000/s
            outcomes = await engine.put_records(name, _records(3000))
            assert all(o.error is None for o in outcomes)
        assert await scaler.tick() == []  # hot since now
        clock.advance_ms(1000)
        (split,) = await scaler.tick()
        assert (split.action, split.shard_ids) == ("split", ("shardId-000000000000",))
        assert _open(engine, "hot")[:2] == ["shardId-000000000004", "shardId-000000000005"]
        assert len(_open(engine, "fixed")) == 4  # PROVISIONED: never scaled
        clock.advance_ms(5_000)  # quiet: the load decays, every pair is cold from here
        assert await scaler.tick() == []
        clock.advance_ms(10_000)
        (merge,) = await scaler.tick()
        assert merge.action == "merge" and len(_open(engine, "hot")) == 4
        for _ in range(8):  # each merge needs the pair cold for 10 s after the last decision
            clock.advance_ms(10_000)
            await scaler.tick()
        assert len(_open(engine, "hot")) == POLICY.shards_min  # and no lower
        assert engine.quotas.metered_shards() > 0
        await engine.delete_stream("hot")
        await scaler.tick()
        assert engine.quotas.metered_shards() == 0  # a gone stream's meters are forgotten
        await engine.close()
        nursery.cancel_scope.cancel()
    await store.aclose()
