"""Consumer lag as Prometheus gauges, per (stream, group, shard), kept by the group's coordinator.

The node that coordinates a group (every group in the embedded default; in cluster mode the
node its placement names) is the one that knows the group's checkpoints, so it exports the lag:
``GroupService.run`` asks ``lag_snapshot`` every ``LAG_REFRESH_S`` (the same describe that
``streamd group describe`` shows: records between the resume position and the shard's high
watermark, and the arrival-time gap in ms), then ``LagSeries.publish`` sets the gauges and
removes the series of groups and shards that are gone (deleted, finished, or moved to another
coordinator), so a stale lag never outlives its group. Series are bounded by ``series_max``; past
it, the rest are left out and a warning says how many.
"""

from __future__ import annotations

from typing import Final

import structlog
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

LAG_REFRESH_S: Final = 2.0
LAG_SERIES_MAX_DEFAULT: Final = 10_000

LAG_RECORDS = Gauge(
    "streamd_group_lag_records",
    "Records between a group's checkpoint (or start) and the shard's high watermark",
    ["stream", "group", "shard"],
)
LAG_SECONDS = Gauge(
    "streamd_group_lag_seconds",
    "Arrival-time gap between the shard's tip and the first record the group has still to process",
    ["stream", "group", "shard"],
)

SeriesKey = tuple[str, str, str]  # (stream, group, shard id)


class LagSeries:
    """The lag series this node exports now."""

    def __init__(self, series_max: int = LAG_SERIES_MAX_DEFAULT) -> None:
        assert series_max > 0
        self.series_max = series_max
        self.exported: set[SeriesKey] = set()

    def publish(self, lags: dict[SeriesKey, tuple[int, int]]) -> None:
        """Set every series of ``lags`` ((records, ms) each) and remove those not in it."""
        keys = sorted(lags)
        if len(keys) > self.series_max:
            log.warning("group.lag_series_capped", series=len(keys), kept=self.series_max)
            keys = keys[: self.series_max]
        for key in keys:
            records, lag_ms = lags[key]
            LAG_RECORDS.labels(*key).set(records)
            LAG_SECONDS.labels(*key).set(lag_ms / 1000)
        kept = set(keys)
        for gone in self.exported - kept:
            LAG_RECORDS.remove(*gone)
            LAG_SECONDS.remove(*gone)
        self.exported = kept

    def clear(self) -> None:
        self.publish({})
