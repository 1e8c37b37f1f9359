"""Enhanced fan-out pacing (frontends/kinesis/fanout_pacing.py): a consumer over its per-shard
quota waits (trio's virtual time), asks for at most one burst, and other consumers do not."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from streamd.catalog import StreamMeta
from streamd.clock import VirtualClock
from streamd.frontends.kinesis.fanout_pacing import PacedSource
from streamd.quotas import QuotaFigures
from streamd.shard import ReadResult
from streamd.throttle import Quotas
from streamd_client import batch as batchfmt
from streamd_client.model import Position

RATE = 1000  # bytes/s per consumer and shard


class _Engine:
    """What PacedSource uses of the engine: stream_meta, quotas, read."""

    def __init__(self) -> None:
        self.meta = StreamMeta.new("s", 1, 24, 0)
        self.quotas = Quotas(QuotaFigures(fanout_bytes_per_s=RATE), VirtualClock())
        self.asked: list[int] = []
        self.batch = batchfmt.encode_batch(["k"], [bytes(16)], [b"x" * 3000], codec=0)

    def stream_meta(self, name: str) -> StreamMeta:
        return self.meta

    async def read(self, *args: Any) -> ReadResult:
        self.asked.append(args[3])
        return ReadResult([self.batch], 0, 1, 1, 0)


@pytest.mark.trio
async def test_a_consumer_over_its_quota_waits_and_others_do_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = _Engine()
    size = batchfmt.parse_header(engine.batch).uncompressed_length
    first = PacedSource(engine, "arn:a")  # type: ignore[arg-type]
    other = PacedSource(engine, "arn:b")  # type: ignore[arg-type]
    started = trio.current_time()
    await first.read("s", "shardId-000000000000", Position.at_offset(0), 10**7, 0)
    assert trio.current_time() == started and engine.asked == [RATE]  # one burst at most
    await other.read("s", "shardId-000000000000", Position.at_offset(0), 10**7, 0)
    assert trio.current_time() == started  # its own bucket
    await first.read("s", "shardId-000000000000", Position.at_offset(0), 10**7, 5000)
    # the debt of the first read (size - burst), plus one byte, at RATE
    assert trio.current_time() - started == pytest.approx((size - RATE + 1) / RATE, abs=0.01)
