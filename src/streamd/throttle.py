"""The engine's side of the throughput quotas: which figures a stream has, the clock, the
typed THROTTLED refusals and the metrics; the buckets themselves are quotas.py's (pure).

The engine calls this object at three places and nowhere else: before it enqueues a shard's
records (``admit_records``, ``admit_batch``), before and after a polling read (``admit_read``,
``charge_read``). A stream is metered when its figures limit anything (the server's
``--quotas``/``--shard-*`` figures, or its own quota tags) or when it is ON_DEMAND (the scaler
needs its measured write load); every other stream costs one dict lookup per call.

A refusal is a ``ThrottledError`` (code THROTTLED, retryable) whose details carry ``shard_id``,
``quota`` (write_bytes, write_records, read_calls, read_bytes) and ``retry_after_ms``: when the
refused request would pass if nothing else came first. The gateway answers it as
ProvisionedThroughputExceededException; the Producer waits that long before it retries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from streamd_client import batch as batchfmt
from streamd_client.errors import InvalidArgumentError, ThrottledError

from . import metrics
from .catalog import StreamMeta
from .clock import Clock
from .quotas import KINESIS_QUOTAS, QuotaBook, QuotaFigures, ShardMeter, figures_with_tags
from .routing import PutOutcome, RecordIn

_QUOTA_UNITS = {
    "write_bytes": ("write_bytes_per_s", "bytes/s"),
    "write_records": ("write_records_per_s", "records/s"),
    "read_bytes": ("read_bytes_per_s", "bytes/s"),
    "read_calls": ("read_calls_per_s", "calls/s"),
}


def _size(record: RecordIn) -> int:
    key = record.partition_key
    return len(record.data) + (len(key) if key.isascii() else len(key.encode()))


class Quotas:
    """Per-shard quotas for one engine (module docstring). ``base``: the server's figures."""

    def __init__(self, base: QuotaFigures, clock: Clock) -> None:
        self.base = base
        self._clock = clock
        self._book = QuotaBook()
        # stream id -> (the tags the figures were made from, the figures): tags dicts are
        # replaced, never changed, with the stream's metadata, so identity says "unchanged".
        self._figures: dict[str, tuple[dict[str, str], QuotaFigures]] = {}
        # (stream id, shard id) -> [records refused for the write quota, reads refused]: what
        # enhanced monitoring exports per shard (monitoring.py); pruned with the meters.
        self._refused: dict[tuple[str, str], list[int]] = {}

    def _now_s(self) -> float:
        return self._clock.monotonic_ms() / 1000

    def figures(self, meta: StreamMeta) -> QuotaFigures:
        """The stream's figures: the server's, with its quota tags applied."""
        cached = self._figures.get(meta.stream_id)
        if cached is not None and cached[0] is meta.tags:
            return cached[1]
        try:
            figures = figures_with_tags(self.base, meta.tags)
        except (
            InvalidArgumentError
        ):  # refused when set (engine._changed_tags): only older documents
            figures = self.base
        self._figures[meta.stream_id] = (meta.tags, figures)
        return figures

    def scaling_figures(self, meta: StreamMeta) -> QuotaFigures:
        """What the on-demand scaler keeps each shard under: the stream's write figures, or
        Kinesis' where the stream has none."""
        figures = self.figures(meta)
        return QuotaFigures(
            write_bytes_per_s=figures.write_bytes_per_s or KINESIS_QUOTAS.write_bytes_per_s,
            write_records_per_s=figures.write_records_per_s or KINESIS_QUOTAS.write_records_per_s,
        )

    def _meter(self, meta: StreamMeta, shard_id: str, now_s: float) -> ShardMeter | None:
        figures = self.figures(meta)
        if not figures.enforced and meta.mode != "ON_DEMAND":
            return None
        return self._book.meter(meta.stream_id, shard_id, figures, now_s)

    def admit_records(
        self,
        meta: StreamMeta,
        shard_id: str,
        records: Sequence[RecordIn],
        indexes: list[int],
        outcomes: list[PutOutcome],
    ) -> list[int]:
        """The indexes (of ``records``, all routed to ``shard_id``) admitted: a prefix. The
        others get a THROTTLED outcome."""
        now_s = self._now_s()
        meter = self._meter(meta, shard_id, now_s)
        if meter is None:
            return indexes
        sizes = [_size(records[i]) for i in indexes]
        verdict = meter.admit_writes(sizes, now_s)
        if verdict.admitted == len(indexes):
            return indexes
        assert verdict.quota is not None
        error = self._refusal(meta, shard_id, meter, verdict.quota, verdict.retry_after_s)
        refused = indexes[verdict.admitted :]
        for i in refused:
            outcomes[i] = PutOutcome(error=error)
        self._count_writes(meta, shard_id, len(refused), sum(sizes[verdict.admitted :]))
        return indexes[: verdict.admitted]

    def admit_batch(self, meta: StreamMeta, shard_id: str, records: batchfmt.Records) -> None:
        """Admit a client-built batch whole. Raises ThrottledError."""
        now_s = self._now_s()
        meter = self._meter(meta, shard_id, now_s)
        if meter is None:
            return
        keys, datas = records.keys, records.datas
        size = sum(map(len, datas)) + sum(len(k) if k.isascii() else len(k.encode()) for k in keys)
        verdict = meter.admit_batch(len(keys), size, now_s)
        if verdict.quota is None:
            return
        self._count_writes(meta, shard_id, len(keys), size)
        raise self._refusal(meta, shard_id, meter, verdict.quota, verdict.retry_after_s)

    def admit_read(self, meta: StreamMeta, shard_id: str) -> None:
        """Admit one polling read. Raises ThrottledError."""
        now_s = self._now_s()
        meter = self._meter(meta, shard_id, now_s)
        if meter is None:
            return
        retry_after_s, quota = meter.admit_read(now_s)
        if quota is None:
            return
        metrics.THROTTLED_READS.labels(meta.name, shard_id).inc()
        self._refused.setdefault((meta.stream_id, shard_id), [0, 0])[1] += 1
        raise self._refusal(meta, shard_id, meter, quota, retry_after_s)

    def charge_read(self, meta: StreamMeta, shard_id: str, batches: Sequence[bytes]) -> None:
        """Charge a polling read's bytes (after it: a read may put the bucket in debt)."""
        if not batches:
            return
        now_s = self._now_s()
        meter = self._meter(meta, shard_id, now_s)
        if meter is None or meter.read_bytes is None:
            return
        meter.charge_read(sum(batchfmt.parse_header(b).uncompressed_length for b in batches), now_s)

    def fanout_pace(self, meta: StreamMeta, shard_id: str, consumer: str) -> tuple[float, int]:
        """(seconds the consumer's next push waits, the bytes one read may take: its burst;
        0 for no limit)."""
        now_s = self._now_s()
        meter = self._meter(meta, shard_id, now_s)
        if meter is None:
            return 0.0, 0
        return meter.fanout_wait_s(consumer, now_s), meter.fanout_burst_bytes or 0

    def charge_fanout(
        self, meta: StreamMeta, shard_id: str, consumer: str, batches: Sequence[bytes]
    ) -> None:
        now_s = self._now_s()
        meter = self._meter(meta, shard_id, now_s)
        if meter is None or not batches:
            return
        size = sum(batchfmt.parse_header(b).uncompressed_length for b in batches)
        meter.charge_fanout(consumer, size, now_s)

    def load(self, meta: StreamMeta, shard_id: str) -> tuple[float, float]:
        """The shard's measured offered write load: (bytes/s, records/s); zeros if unmetered."""
        meter = self._book.get(meta.stream_id, shard_id)
        return (0.0, 0.0) if meter is None else meter.load(self._now_s())

    def refused(self, meta: StreamMeta, shard_id: str) -> tuple[int, int]:
        """(records refused for the shard's write quota, polling reads refused) so far."""
        counts = self._refused.get((meta.stream_id, shard_id))
        return (0, 0) if counts is None else (counts[0], counts[1])

    def metered_shards(self) -> int:
        """How many shards have a meter now."""
        return len(self._book)

    def prune(self, live: set[tuple[str, str]]) -> int:
        """Forget the meters of shards not in ``live`` ((stream id, shard id) pairs)."""
        for key in [k for k in self._refused if k not in live]:
            del self._refused[key]
        live_streams = {stream_id for stream_id, _ in live}
        for stream_id in [s for s in self._figures if s not in live_streams]:
            del self._figures[stream_id]
        return self._book.prune(live)

    def _refusal(
        self, meta: StreamMeta, shard_id: str, meter: ShardMeter, quota: str, retry_after_s: float
    ) -> ThrottledError:
        field, unit = _QUOTA_UNITS[quota]
        figure = getattr(meter.figures, field)
        retry_after_ms = max(1, math.ceil(retry_after_s * 1000))
        return ThrottledError(
            f"Rate exceeded for shard {shard_id} in stream {meta.name}: over its "
            f"{quota.replace('_', ' ')} quota of {figure} {unit}; retry after {retry_after_ms} ms",
            shard_id=shard_id,
            quota=quota,
            retry_after_ms=retry_after_ms,
        )

    def _count_writes(self, meta: StreamMeta, shard_id: str, records: int, size: int) -> None:
        self._refused.setdefault((meta.stream_id, shard_id), [0, 0])[0] += records
        metrics.THROTTLED_RECORDS.labels(meta.name, shard_id).inc(records)
        metrics.THROTTLED_BYTES.labels(meta.name, shard_id).inc(size)
