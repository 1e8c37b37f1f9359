"""Enhanced fan-out reads paced to each consumer's per-shard quota (2 MiB/s in Kinesis).

A subscription reads through ``PacedSource`` instead of the engine itself: before each read it
waits out the consumer's debt for that shard (throttle.py / quotas.py keep one bucket per
consumer and shard), asks for no more than one burst, and charges what came back. Fan-out is
never refused for its rate, as in Kinesis: a consumer over it simply gets its events later.
The wait happens inside the subscription's read scope, so ending the subscription cancels it.
"""

from __future__ import annotations

import math

import trio

from streamd_client.model import Position

from ...engine import Engine
from ...shard import ReadResult


class PacedSource:
    """The ``ShardSource`` of one consumer's subscriptions (fanout.py)."""

    def __init__(self, engine: Engine, consumer_arn: str) -> None:
        self.engine = engine
        self.consumer = consumer_arn

    async def read(
        self, name: str, shard_id: str, position: Position, max_bytes: int, wait_ms: int
    ) -> ReadResult:
        quotas = self.engine.quotas
        meta = self.engine.stream_meta(name)
        delay_s, burst_bytes = quotas.fanout_pace(meta, shard_id, self.consumer)
        if delay_s > 0:
            await trio.sleep(delay_s)
            wait_ms = max(0, wait_ms - math.ceil(delay_s * 1000))
        if burst_bytes:
            max_bytes = min(max_bytes, burst_bytes)
        result = await self.engine.read(name, shard_id, position, max_bytes, wait_ms)
        quotas.charge_fanout(meta, shard_id, self.consumer, result.batches)
        return result
