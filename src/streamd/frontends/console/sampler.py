"""Rates and history for the console: sampled once a second from what the node already keeps.

``RateSampler.sample`` reads, for every shard this node leads, its high watermark (records
committed so far) and its log's size, and the server's per-stream read counter
(``streamd_records_read_total``, which leaves out the console's own browsing); the differences
from the previous sample, over the time between them, are the write and read rates. It keeps
the last ``HISTORY_SAMPLES`` per-shard write rates in one float32 ring per shard (10,000 shards
x 120 samples is under 5 MB), with one shared ring of sample times, for the live charts. Cost:
one pass over the node's shards per second (attribute reads only), no I/O.

In cluster mode only the shard pipelines this node runs are sampled (their leaders sample the
others); the node counts also how many open shards each node leads, from the shard map.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from typing import Any, Final

import trio

from ... import metrics
from ...engine import Engine
from ...routing import Local, Remote

HISTORY_SAMPLES: Final = 120
SAMPLE_INTERVAL_S: Final = 1.0


class RateSampler:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self.times = array("d", [math.nan] * HISTORY_SAMPLES)  # wall time of each sample, s
        self.cursor = 0  # the slot the next sample goes in
        self.samples = 0
        self._history: dict[tuple[str, str], array[float]] = {}  # (stream id, shard) -> ring
        self._hwm: dict[tuple[str, str], int] = {}
        self._read_totals: dict[str, float] = {}
        self._last_s: float | None = None
        self.shard_rate: dict[tuple[str, str], float] = {}  # (stream name, shard) -> records/s
        self.write_rate: dict[str, float] = {}  # stream name -> records/s
        self.read_rate: dict[str, float] = {}
        self.bytes_stored: dict[str, int] = {}
        self.shards_led: dict[str, int] = {}  # node id -> open shards it leads (cluster mode)

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        now_s = self.clock()
        dt = None if self._last_s is None else max(now_s - self._last_s, 1e-3)
        self._last_s = now_s
        slot = self.cursor
        self.times[slot] = now_s
        hwm: dict[tuple[str, str], int] = {}
        history: dict[tuple[str, str], array[float]] = {}
        shard_rate: dict[tuple[str, str], float] = {}
        write_rate: dict[str, float] = {}
        stored: dict[str, int] = {}
        for name, stream in list(self.engine.streams.items()):
            stream_id = stream.meta.stream_id
            total_rate = 0.0
            total_bytes = 0
            for shard_id, pipeline in list(stream.pipelines.items()):
                key = (stream_id, shard_id)
                mark = pipeline.high_watermark
                before = self._hwm.get(key)
                rate = 0.0 if dt is None or before is None else max(0, mark - before) / dt
                hwm[key] = mark
                ring = self._history.get(key) or array("f", [math.nan] * HISTORY_SAMPLES)
                ring[slot] = rate
                history[key] = ring
                shard_rate[(name, shard_id)] = rate
                total_rate += rate
                total_bytes += pipeline.log.size_bytes
            write_rate[name] = total_rate
            stored[name] = total_bytes
        self._hwm, self._history = hwm, history
        self.shard_rate, self.write_rate, self.bytes_stored = shard_rate, write_rate, stored
        self.read_rate = self._read_rates(dt)
        if self.engine.clustered:
            self.shards_led = self._count_leaders()
        self.cursor = (slot + 1) % HISTORY_SAMPLES
        self.samples += 1

    def _read_rates(self, dt: float | None) -> dict[str, float]:
        totals: dict[str, float] = {}
        for family in metrics.RECORDS_READ.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[sample.labels["stream"]] = sample.value
        rates = {}
        for name, value in totals.items():
            before = self._read_totals.get(name)
            rates[name] = 0.0 if dt is None or before is None else max(0.0, value - before) / dt
        self._read_totals = totals
        return rates

    def _count_leaders(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        self_id = self.engine.locator.self_node()[0]
        for name, stream in list(self.engine.streams.items()):
            for shard in stream.meta.open_shards():
                location = self.engine.locator.locate(name, shard.shard_id)
                if isinstance(location, Local):
                    counts[self_id] = counts.get(self_id, 0) + 1
                elif isinstance(location, Remote):
                    counts[location.node_id] = counts.get(location.node_id, 0) + 1
        return counts

    def series(self, stream_id: str, shard_ids: list[str]) -> dict[str, Any]:
        """uPlot's data for these shards' write rates, oldest sample first: ``x`` (seconds),
        then one list per shard (None where there was no sample)."""
        order = [(self.cursor + i) % HISTORY_SAMPLES for i in range(HISTORY_SAMPLES)]
        kept = [i for i in order if not math.isnan(self.times[i])]
        x = [round(self.times[i], 3) for i in kept]
        ys = []
        for shard_id in shard_ids:
            ring = self._history.get((stream_id, shard_id))
            ys.append([None if ring is None else _num(ring[i]) for i in kept])
        return {"x": x, "ys": ys, "labels": shard_ids}


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)
