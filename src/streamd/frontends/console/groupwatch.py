"""Lag over time for the consumer groups someone is looking at, and their rebalances.

A group's page asks for its watch (``GroupWatches.touch``); while it is watched (its page or
its event stream asked within ``unwatched_s``), ``sample`` describes it once a second through
the node's group operation (``group_describe``, which cluster mode routes to the group's
coordinator) and keeps the last ``HISTORY_SAMPLES`` lags: in total, and per shard for groups of
at most ``SHARD_SERIES_MAX`` shards. Comparing two describes gives the rebalances (members
joining or leaving, leases changing hands), kept as events (the last ``EVENTS_MAX``) that the
chart marks. At most ``watches_max`` groups are watched at once (the least recently viewed goes
first), and each describe has a timeout, so the cost is bounded whatever the number of groups.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from streamd_client.errors import StreamdError

log = structlog.get_logger(__name__)

HISTORY_SAMPLES: Final = 300
SHARD_SERIES_MAX: Final = 16
EVENTS_MAX: Final = 50
DESCRIBE_TIMEOUT_S: Final = 2.0

Describe = Callable[[str, str], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class GroupWatch:
    stream: str
    group: str
    viewed_s: float
    times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    total_lag: deque[int | None] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    shard_lag: dict[str, deque[int | None]] = field(default_factory=dict)
    events: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=EVENTS_MAX))
    view: dict[str, Any] | None = None  # the last describe
    error: str | None = None

    def add(self, now_s: float, view: dict[str, Any]) -> None:
        if self.view is not None:
            for text in rebalance_events(self.view, view):
                self.events.append((now_s, text))
        self.view, self.error = view, None
        shards = view["shards"]
        lags = {s["shard_id"]: s.get("lag_records") for s in shards}
        known = [v for v in lags.values() if v is not None]
        self.times.append(now_s)
        self.total_lag.append(sum(known) if known else None)
        if len(shards) <= SHARD_SERIES_MAX:
            for shard_id in lags:
                if shard_id not in self.shard_lag:
                    past = [None] * (len(self.times) - 1)
                    self.shard_lag[shard_id] = deque(past, maxlen=HISTORY_SAMPLES)
            for shard_id, series in self.shard_lag.items():
                series.append(lags.get(shard_id))
        else:
            self.shard_lag.clear()

    def chart(self) -> dict[str, Any]:
        """uPlot's data: total lag first, then per shard; events as (time, text)."""
        labels = ["total", *self.shard_lag]
        ys = [list(self.total_lag), *(list(s) for s in self.shard_lag.values())]
        return {
            "x": [round(t, 3) for t in self.times],
            "ys": ys,
            "labels": labels,
            "events": [{"t": round(t, 3), "text": text} for t, text in self.events],
        }


def rebalance_events(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed in a group's membership and leases between two describes."""
    events = []
    old_members = {m["member_id"] for m in before["members"]}
    new_members = {m["member_id"] for m in after["members"]}
    events += [f"member {m} joined" for m in sorted(new_members - old_members)]
    events += [f"member {m} left" for m in sorted(old_members - new_members)]
    old_owner = {s["shard_id"]: s["owner"] for s in before["shards"]}
    moved = []
    for shard in after["shards"]:
        previous = old_owner.get(shard["shard_id"])
        if shard["shard_id"] in old_owner and previous != shard["owner"]:
            moved.append(f"{shard['shard_id']}: {previous or 'free'} → {shard['owner'] or 'free'}")
    if moved:
        shown = "; ".join(moved[:5]) + (f"; and {len(moved) - 5} more" if len(moved) > 5 else "")
        events.append(f"rebalance: {shown}")
    return events


class GroupWatches:
    def __init__(
        self,
        describe: Describe,
        *,
        watches_max: int = 32,
        unwatched_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.describe = describe
        self.watches_max = watches_max
        self.unwatched_s = unwatched_s
        self.clock = clock
        self.watches: dict[tuple[str, str], GroupWatch] = {}

    def touch(self, stream: str, group: str) -> GroupWatch:
        now_s = self.clock()
        watch = self.watches.get((stream, group))
        if watch is None:
            if len(self.watches) >= self.watches_max:
                oldest = min(self.watches.values(), key=lambda w: w.viewed_s)
                del self.watches[(oldest.stream, oldest.group)]
            watch = self.watches[(stream, group)] = GroupWatch(stream, group, now_s)
        watch.viewed_s = now_s
        return watch

    async def sample(self) -> None:
        now_s = self.clock()
        for key, watch in list(self.watches.items()):
            if now_s - watch.viewed_s > self.unwatched_s:
                del self.watches[key]
                continue
            await self.sample_one(watch)

    async def sample_one(self, watch: GroupWatch) -> None:
        try:
            with trio.fail_after(DESCRIBE_TIMEOUT_S):
                view = await self.describe(watch.stream, watch.group)
        except StreamdError as exc:
            watch.error = f"{exc.code}: {exc.message}"[:300]
            return
        except TimeoutError:
            watch.error = "the group's coordinator did not answer in time"
            return
        watch.add(self.clock(), view)

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            await self.sample()
            await trio.sleep(interval_s)
