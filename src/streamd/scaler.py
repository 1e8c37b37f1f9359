"""The on-demand scaler: a trio loop that splits hot shards and merges cold ones of ON_DEMAND
streams, through the engine's own split_shard and merge_shards (docs/resharding.md).

Every ``interval_s`` it reads, for each ACTIVE ON_DEMAND stream, the offered write load of its
open shards (accepted plus throttled, measured by throttle.py's meters; quotas.py), divides it
by the shard's write quota (the stream's figures, or Kinesis' 1 MiB/s and 1,000 records/s where
the server has none), and hands the ratios to the stream's ``StreamScaler`` (scaling.py, pure),
which decides. A decision is carried out at once, bounded by ``STEP_TIMEOUT_S``; a failure (the
stream busy, deleted, the disk full) is logged and counted, and the next round decides again.
Each round also forgets the meters of shards that no longer exist (``Quotas.prune``).

Decisions are logged (``on_demand.split`` / ``on_demand.merge``, with the ratio that made them)
and counted in ``streamd_on_demand_decisions_total``; each open shard's load ratio is the gauge
``streamd_on_demand_shard_load_ratio``.

It runs in the embedded default only: in cluster mode each node measures just the shards it
leads, and scaling from a partial view would merge shards that are busy elsewhere.
"""

from __future__ import annotations

from typing import Final

import structlog
import trio

from streamd_client.errors import StreamdError

from . import metrics
from .catalog import StreamMeta
from .engine import Engine
from .scaling import Decision, ScalingPolicy, ShardLoad, StreamScaler

log = structlog.get_logger(__name__)

STEP_TIMEOUT_S: Final = 60.0  # one split or merge, sealing and switch included


class OnDemandScaler:
    """Scales the ON_DEMAND streams of one engine; ``run`` until cancelled (or ``stop``)."""

    def __init__(self, engine: Engine, policy: ScalingPolicy, *, interval_s: float) -> None:
        assert interval_s > 0
        self.engine = engine
        self.policy = policy
        self.interval_s = interval_s
        self._scalers: dict[str, StreamScaler] = {}  # by stream id
        self._gauged: dict[str, set[str]] = {}  # stream name -> shard ids with a load gauge
        self._scope: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            task_status.started()
            while True:
                await trio.sleep(self.interval_s)
                await self.tick()

    def stop(self) -> None:
        """End ``run`` (before the engine closes: no split starts during the shutdown)."""
        if self._scope is not None:
            self._scope.cancel()

    async def tick(self) -> list[Decision]:
        """One round over every stream; the decisions carried out (or tried)."""
        engine = self.engine
        now_s = engine.clock.monotonic_ms() / 1000
        metas = []
        for name in engine.list_streams():
            try:
                metas.append(engine.stream_meta(name))
            except StreamdError:  # deleted meanwhile
                continue
        engine.quotas.prune({(m.stream_id, s.shard_id) for m in metas for s in m.shards})
        on_demand = [m for m in metas if m.mode == "ON_DEMAND"]
        self._forget(on_demand)
        decisions: list[Decision] = []
        for meta in on_demand:
            loads = self._loads(meta)
            if meta.status != "ACTIVE":
                continue
            scaler = self._scalers.setdefault(meta.stream_id, StreamScaler(self.policy))
            decision = scaler.observe(loads, now_s)
            if decision is not None:
                decisions.append(decision)
                await self._carry_out(meta.name, decision)
        return decisions

    def _loads(self, meta: StreamMeta) -> list[ShardLoad]:
        quotas = self.engine.quotas
        figures = quotas.scaling_figures(meta)
        assert figures.write_bytes_per_s is not None and figures.write_records_per_s is not None
        loads = []
        for shard in meta.open_shards():
            bytes_per_s, records_per_s = quotas.load(meta, shard.shard_id)
            ratio = max(
                bytes_per_s / figures.write_bytes_per_s,
                records_per_s / figures.write_records_per_s,
            )
            loads.append(ShardLoad(shard.shard_id, shard.hash_key_start, shard.hash_key_end, ratio))
        self._gauge(meta.name, loads)
        return loads

    def _gauge(self, name: str, loads: list[ShardLoad]) -> None:
        now = {load.shard_id for load in loads}
        for gone in self._gauged.get(name, set()) - now:
            metrics.ON_DEMAND_SHARD_LOAD.remove(name, gone)
        for load in loads:
            metrics.ON_DEMAND_SHARD_LOAD.labels(name, load.shard_id).set(round(load.ratio, 4))
        self._gauged[name] = now

    def _forget(self, on_demand: list[StreamMeta]) -> None:
        """Drop the state of streams no longer ON_DEMAND (or gone)."""
        ids = {m.stream_id for m in on_demand}
        for stream_id in [i for i in self._scalers if i not in ids]:
            del self._scalers[stream_id]
        names = {m.name for m in on_demand}
        for name in [n for n in self._gauged if n not in names]:
            for shard_id in self._gauged.pop(name):
                metrics.ON_DEMAND_SHARD_LOAD.remove(name, shard_id)

    async def _carry_out(self, name: str, decision: Decision) -> None:
        fields = {
            "stream": name,
            "shards": list(decision.shard_ids),
            "ratio": round(decision.ratio, 3),
            "open_shards": decision.open_shards,
        }
        outcome = "failed"
        try:
            with trio.fail_after(STEP_TIMEOUT_S):
                if decision.action == "split":
                    children = await self.engine.split_shard(name, decision.shard_ids[0])
                else:
                    left, right = decision.shard_ids
                    children = [await self.engine.merge_shards(name, left, right)]
            outcome = "done"
            log.info(f"on_demand.{decision.action}", children=children, **fields)
        except (StreamdError, trio.TooSlowError) as exc:
            log.warning(f"on_demand.{decision.action}_failed", error=str(exc)[:200], **fields)
        finally:
            metrics.ON_DEMAND_DECISIONS.labels(name, decision.action, outcome).inc()
