"""The health gauges' rules: which shards count as under-replicated (the controller's round),
and the lag series a coordinator exports (set, then removed once their group is gone)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from streamd.controller.service import under_replicated
from streamd.groups.lag_metrics import LagSeries
from streamd.meta.keys import ShardAssignment

LIVE = frozenset({"n1", "n2"})


def shard(replicas: tuple[str, ...], rf: int = 3) -> ShardAssignment:
    leader = replicas[0] if replicas else None
    status = "ok" if replicas else "unassigned"
    return ShardAssignment("s", "shardId-000000000000", rf, replicas, leader, 1, status)


def test_a_shard_short_of_live_replicas_but_served_is_under_replicated() -> None:
    assert under_replicated(shard(("n1", "n2", "n3")), LIVE)  # n3 down: 2 of 3
    assert under_replicated(shard(("n1",), rf=2), LIVE)  # placed short of its factor
    assert not under_replicated(shard(("n1", "n2"), rf=2), LIVE)  # whole
    assert not under_replicated(shard(("n3", "n4")), LIVE)  # none live: unavailable instead
    assert not under_replicated(shard(()), LIVE)  # not placed yet


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_lag_series_are_set_then_removed_when_their_group_is_gone() -> None:
    series = LagSeries(series_max=2)
    a = ("lag-test", "a", "shardId-000000000000")
    b = ("lag-test", "b", "shardId-000000000000")
    c = ("lag-test", "c", "shardId-000000000000")
    series.publish({a: (7, 1500), b: (0, 0)})
    labels_a = dict(zip(("stream", "group", "shard"), a, strict=True))
    assert value("streamd_group_lag_records", **labels_a) == 7
    assert value("streamd_group_lag_seconds", **labels_a) == 1.5
    series.publish({b: (3, 10), c: (1, 1), ("lag-test", "d", "x"): (1, 1)})  # over the bound
    assert value("streamd_group_lag_records", **labels_a) is None
    assert series.exported == {b, c}
    series.clear()
    assert value("streamd_group_lag_records", stream="lag-test", group="b", shard=b[2]) is None
