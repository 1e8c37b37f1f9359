"""On-demand scaling decisions (streamd/scaling.py) on made-up loads and clocks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.scaling import ScalingPolicy, ShardLoad, StreamScaler
from streamd_client.model import even_hash_ranges

POLICY = ScalingPolicy(shards_min=2, shards_max=6, hot_for_s=2, cold_for_s=60, cooldown_s=5)


def loads(*ratios: float) -> list[ShardLoad]:
    ranges = even_hash_ranges(len(ratios))
    return [
        ShardLoad(f"s{i}", start, end, ratio)
        for i, ((start, end), ratio) in enumerate(zip(ranges, ratios, strict=True))
    ]


def test_a_shard_hot_for_long_enough_is_split_and_a_brief_spike_is_not() -> None:
    scaler = StreamScaler(POLICY)
    assert scaler.observe(loads(0.1, 1.2, 0.1), 0.0) is None
    assert scaler.observe(loads(0.1, 0.3, 0.1), 1.0) is None  # the spike passed
    assert scaler.observe(loads(0.1, 1.2, 0.1), 2.0) is None
    assert scaler.observe(loads(0.1, 1.2, 0.1), 3.0) is None  # hot for 1 s only
    decision = scaler.observe(loads(0.1, 1.2, 0.1), 4.0)
    assert decision is not None
    assert (decision.action, decision.shard_ids, decision.open_shards) == ("split", ("s1",), 3)


def test_the_hottest_shard_is_split_first() -> None:
    scaler = StreamScaler(POLICY)
    scaler.observe(loads(0.9, 1.5, 1.1), 0.0)
    decision = scaler.observe(loads(0.9, 1.5, 1.1), 2.0)
    assert decision is not None and decision.shard_ids == ("s1",)


def test_after_a_decision_the_stream_settles_for_the_cooldown() -> None:
    scaler = StreamScaler(POLICY)
    scaler.observe(loads(1.0, 1.0), 0.0)
    assert scaler.observe(loads(1.0, 1.0), 2.0) is not None
    hot = loads(1.0, 1.0, 1.0)
    assert scaler.observe(hot, 4.0) is None
    assert scaler.observe(hot, 6.9) is None  # in the cooldown (and hot only since 4.0)
    assert scaler.observe(hot, 7.0) is not None


def test_no_split_beyond_shards_max_nor_of_a_single_key() -> None:
    scaler = StreamScaler(POLICY)
    six = loads(*[2.0] * 6)
    scaler.observe(six, 0.0)
    assert scaler.observe(six, 10.0) is None
    one_key = [ShardLoad("a", 0, 0, 5.0), ShardLoad("b", 1, 2**128 - 1, 0.0)]
    scaler = StreamScaler(POLICY)
    scaler.observe(one_key, 0.0)
    assert scaler.observe(one_key, 10.0) is None


def test_cold_neighbours_are_merged_slowly_and_not_below_shards_min() -> None:
    scaler = StreamScaler(POLICY)
    quiet = loads(0.05, 0.02, 0.5, 0.01)
    assert scaler.observe(quiet, 0.0) is None
    assert scaler.observe(quiet, 59.0) is None
    decision = scaler.observe(quiet, 60.0)
    assert decision is not None
    assert (decision.action, decision.shard_ids) == ("merge", ("s0", "s1"))
    two = loads(0.0, 0.0)
    scaler = StreamScaler(POLICY)
    scaler.observe(two, 0.0)
    assert scaler.observe(two, 600.0) is None


def test_a_pair_that_warms_up_starts_its_cold_time_again() -> None:
    scaler = StreamScaler(POLICY)
    scaler.observe(loads(0.0, 0.0, 0.0), 0.0)
    scaler.observe(loads(0.3, 0.3, 0.3), 30.0)
    assert scaler.observe(loads(0.0, 0.0, 0.0), 60.0) is None
    assert scaler.observe(loads(0.0, 0.0, 0.0), 119.0) is None
    assert scaler.observe(loads(0.0, 0.0, 0.0), 120.0) is not None


ratios = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=30), ratios), max_size=40))
def test_decisions_are_always_carried_out_shapes_within_bounds(
    steps: list[tuple[float, list[float]]],
) -> None:
    scaler = StreamScaler(POLICY)
    now, last = 0.0, None
    for gap, values in steps:
        now += gap
        shards = loads(*values)
        decision = scaler.observe(shards, now)
        if decision is None:
            continue
        assert last is None or now - last >= POLICY.cooldown_s
        last = now
        ids = [s.shard_id for s in shards]
        if decision.action == "split":
            assert len(shards) < POLICY.shards_max
            assert values[ids.index(decision.shard_ids[0])] > POLICY.split_above
        else:
            left, right = decision.shard_ids
            assert ids.index(right) == ids.index(left) + 1
            assert len(shards) > POLICY.shards_min
            assert decision.ratio < POLICY.merge_below
