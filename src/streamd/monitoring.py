"""Enhanced monitoring: per-shard Prometheus metrics for the streams that enabled them.

Every ShardPipeline counts what passes through it in a ``ShardCounters`` (plain integers, added
once per group commit or read, never per record, so counting costs nothing measurable). Nothing
is exported per shard unless asked: ``ShardMetricsCollector``, registered when the server serves
``/metrics``, walks the engine's streams at scrape time and yields, for each stream, only the
metrics its ``StreamMeta.shard_level_metrics`` names (EnableEnhancedMonitoring sets them; the
catalog keeps them, so they survive restarts and every cluster node sees them). Per-shard
series are what Kinesis charges extra for; here they cost label cardinality, so they stay off
by default. In a cluster each node exports the shards it leads.

What is counted (docs/kinesis.md, "Enhanced monitoring"):
- Incoming: records committed, and their bytes as the write queue counts them (record data and
  partition keys plus 24 bytes a record; a client-built batch: its size).
- Outgoing: records and stored (compressed) batch bytes that reads returned, from every front
  end (GetRecords, SubscribeToShard, native reads; iterator lookups read a record too).
- WriteProvisionedThroughputExceeded: records refused with THROTTLED at the shard, for its
  full write queue (``write_throttled``) or its write quota (throttle.py).
  ReadProvisionedThroughputExceeded: polling reads refused by the shard's read quota
  (throttle.py; 0 while no quota is enforced).
- IteratorAgeMilliseconds: at the last read that returned records, the time between the read and
  the arrival of the last record it returned (exported in seconds, Prometheus's unit).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .catalog import StreamMeta


@dataclass(slots=True)
class ShardCounters:
    """One shard's running totals (monotonic, except the iterator age)."""

    incoming_records: int = 0
    incoming_bytes: int = 0
    outgoing_records: int = 0
    outgoing_bytes: int = 0
    write_throttled: int = 0  # for a full write queue; quota refusals are throttle.py's
    iterator_age_ms: int = 0


# Kinesis metric name -> (Prometheus name without _total, help, ShardCounters field, counter?)
_METRICS: Final = {
    "IncomingRecords": (
        "streamd_shard_incoming_records",
        "Records committed to the shard (enhanced monitoring)",
        "incoming_records",
        True,
    ),
    "IncomingBytes": (
        "streamd_shard_incoming_bytes",
        "Bytes of records committed to the shard: data, keys, 24 a record (enhanced monitoring)",
        "incoming_bytes",
        True,
    ),
    "OutgoingRecords": (
        "streamd_shard_outgoing_records",
        "Records returned by reads of the shard (enhanced monitoring)",
        "outgoing_records",
        True,
    ),
    "OutgoingBytes": (
        "streamd_shard_outgoing_bytes",
        "Stored batch bytes returned by reads of the shard (enhanced monitoring)",
        "outgoing_bytes",
        True,
    ),
    "WriteProvisionedThroughputExceeded": (
        "streamd_shard_write_throttled_records",
        "Records refused with THROTTLED by the shard: full queue or write quota (enhanced "
        "monitoring)",
        "write_throttled",
        True,
    ),
    "ReadProvisionedThroughputExceeded": (
        "streamd_shard_read_throttled",
        "Polling reads of the shard refused by its read quota (enhanced monitoring)",
        "read_throttled",
        True,
    ),
    "IteratorAgeMilliseconds": (
        "streamd_shard_iterator_age_seconds",
        "Age of the last record the shard's last non-empty read returned (enhanced monitoring)",
        "iterator_age_ms",
        False,
    ),
}


class _Pipeline(Protocol):  # what the collector reads of the engine (no import of it: no circle)
    @property
    def counters(self) -> ShardCounters: ...


class _Stream(Protocol):
    @property
    def meta(self) -> StreamMeta: ...
    @property
    def pipelines(self) -> Mapping[str, _Pipeline]: ...


class _Quotas(Protocol):
    def refused(self, meta: StreamMeta, shard_id: str) -> tuple[int, int]: ...


class _Engine(Protocol):
    @property
    def streams(self) -> Mapping[str, _Stream]: ...
    @property
    def quotas(self) -> _Quotas: ...


class ShardMetricsCollector(Collector):
    """Exports the enabled per-shard metrics of ``engine``'s streams at scrape time."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for stream in list(self.engine.streams.values()):
            enabled = stream.meta.shard_level_metrics
            if not enabled:
                continue
            for shard_id, pipeline in sorted(stream.pipelines.items()):
                for kinesis_name in enabled:
                    spec = _METRICS.get(kinesis_name)
                    if spec is None:
                        continue
                    name, help_text, attribute, is_counter = spec
                    family = families.get(name)
                    if family is None:
                        family = families[name] = (
                            CounterMetricFamily(name, help_text, labels=("stream", "shard"))
                            if is_counter
                            else GaugeMetricFamily(name, help_text, labels=("stream", "shard"))
                        )
                    value: float = getattr(pipeline.counters, attribute, 0)
                    if attribute in ("write_throttled", "read_throttled"):
                        records, reads = self.engine.quotas.refused(stream.meta, shard_id)
                        value += records if attribute == "write_throttled" else reads
                    if not is_counter:
                        value /= 1000
                    family.add_metric((stream.meta.name, shard_id), value)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unknown until scraped: the registry must not call collect() early
