"""Per-shard throughput quotas (streamd/quotas.py): token buckets on made-up clocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.quotas import (
    KINESIS_QUOTAS,
    QUOTAS_OFF,
    QuotaBook,
    QuotaFigures,
    ShardMeter,
    TokenBucket,
    check_quota_tags,
    figures_with_tags,
    quota_tags,
)
from streamd_client.errors import InvalidArgumentError

EPS = 1e-6

costs = st.integers(min_value=1, max_value=5_000)
gaps = st.floats(min_value=0.0, max_value=0.5, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=2_000),
    steps=st.lists(st.tuples(gaps, costs), min_size=1, max_size=200),
)
def test_a_bucket_never_admits_more_than_its_burst_plus_its_rate_plus_one_debt(
    rate: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, 0.0)
    now, admitted = 0.0, 0
    for gap, cost in steps:
        now += gap
        if bucket.admit(cost, now):
            admitted += cost
    largest = max(cost for _, cost in steps)
    bound = bucket.capacity + rate * now + max(0.0, largest - bucket.capacity)
    assert admitted <= bound + EPS
    assert bucket.tokens <= bucket.capacity + EPS


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=2_000),
    history=st.lists(st.tuples(gaps, costs), max_size=50),
    cost=costs,
)
def test_a_cost_is_admitted_once_its_wait_has_passed(
    rate: int, history: list[tuple[float, int]], cost: int
) -> None:
    bucket = TokenBucket(rate, 0.0)
    now = 0.0
    for gap, spent in history:
        now += gap
        bucket.admit(spent, now)
    wait = bucket.wait_s(cost, now)
    assert wait >= 0
    if wait > 0:
        assert not bucket.admit(cost, now)
    assert bucket.admit(cost, now + wait + EPS)


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(min_value=1, max_value=1_000), cost=costs, seconds=st.integers(1, 30))
def test_a_client_that_waits_as_told_gets_the_whole_rate(
    rate: int, cost: int, seconds: int
) -> None:
    bucket = TokenBucket(rate, 0.0)
    now, admitted = 0.0, 0
    while now < seconds:
        if bucket.admit(cost, now):
            admitted += cost
        else:
            now += bucket.wait_s(cost, now) + EPS
    assert admitted >= rate * seconds - cost - bucket.capacity


def test_a_cost_above_the_burst_passes_on_a_full_bucket_and_is_paid_back_first() -> None:
    bucket = TokenBucket(100, 0.0)  # capacity 100
    assert bucket.admit(1_000, 0.0)  # full: a 10-second debt
    assert bucket.tokens == -900
    assert not bucket.admit(1, 5.0)
    assert bucket.wait_s(1, 5.0) == pytest.approx(4.01)
    assert bucket.admit(1, 9.02)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=100),
    bytes_per_s=st.integers(min_value=1, max_value=5_000),
    records_per_s=st.integers(min_value=1, max_value=50),
)
def test_writes_are_admitted_as_a_prefix_within_both_quotas(
    sizes: list[int], bytes_per_s: int, records_per_s: int
) -> None:
    figures = QuotaFigures(write_bytes_per_s=bytes_per_s, write_records_per_s=records_per_s)
    meter = ShardMeter(figures, 0.0)
    verdict = meter.admit_writes(sizes, 0.0)
    taken = sizes[: verdict.admitted]
    assert verdict.admitted <= max(1, records_per_s)
    if taken:
        assert sum(taken) - max(taken) < max(1, bytes_per_s)
    if verdict.admitted < len(sizes):
        assert verdict.retry_after_s > 0 and verdict.quota in ("write_bytes", "write_records")
        # what was refused first passes once the wait has passed
        later = meter.admit_writes(sizes[verdict.admitted :][:1], verdict.retry_after_s + EPS)
        assert later.admitted == 1
    else:
        assert verdict.quota is None


def test_kinesis_figures_refuse_the_1001st_record_of_a_second() -> None:
    meter = ShardMeter(KINESIS_QUOTAS, 0.0)
    verdict = meter.admit_writes([10] * 1001, 0.0)
    assert (verdict.admitted, verdict.quota) == (1000, "write_records")
    assert verdict.retry_after_s == pytest.approx(0.001)


def test_kinesis_figures_refuse_writes_past_one_mebibyte() -> None:
    meter = ShardMeter(KINESIS_QUOTAS, 0.0)
    verdict = meter.admit_writes([256 * 1024] * 5, 0.0)
    assert (verdict.admitted, verdict.quota) == (4, "write_bytes")
    assert verdict.retry_after_s == pytest.approx(0.25)


def test_a_batch_is_admitted_whole_or_not_at_all() -> None:
    meter = ShardMeter(QuotaFigures(write_bytes_per_s=1000, write_records_per_s=10), 0.0)
    assert meter.admit_batch(8, 800, 0.0).admitted == 8
    refused = meter.admit_batch(8, 800, 0.0)
    assert refused.admitted == 0 and refused.quota is not None
    assert refused.retry_after_s == pytest.approx(0.6)  # 8 of 10 record tokens to come back
    assert meter.admit_batch(8, 800, 0.61).admitted == 8


def test_polling_reads_count_calls_then_bytes_after_the_read() -> None:
    meter = ShardMeter(QuotaFigures(read_bytes_per_s=1000, read_calls_per_s=2), 0.0)
    assert meter.admit_read(0.0) == (0.0, None)
    meter.charge_read(5000, 0.0)  # a big answer: 5 seconds of debt
    wait, quota = meter.admit_read(0.1)
    assert quota == "read_bytes" and wait == pytest.approx(3.901)
    assert meter.admit_read(4.1) == (0.0, None)
    assert meter.admit_read(4.1) == (0.0, None)
    assert meter.admit_read(4.1)[1] == "read_calls"


def test_each_fanout_consumer_has_its_own_bucket() -> None:
    meter = ShardMeter(QuotaFigures(fanout_bytes_per_s=1000), 0.0)
    meter.charge_fanout("a", 3000, 0.0)
    assert meter.fanout_wait_s("a", 0.0) == pytest.approx(2.001)
    assert meter.fanout_wait_s("b", 0.0) == 0.0
    assert meter.fanout_burst_bytes == 1000


def test_no_figure_is_no_limit_but_the_load_is_still_measured() -> None:
    meter = ShardMeter(QUOTAS_OFF, 0.0)
    assert meter.admit_writes([10**6] * 500, 0.0).admitted == 500
    assert meter.admit_read(0.0) == (0.0, None)
    bytes_per_s, records_per_s = meter.load(0.0)
    assert bytes_per_s > 0 and records_per_s > 0
    assert meter.load(60.0)[0] < bytes_per_s / 1000  # decays away


def test_the_measured_load_settles_at_the_offered_rate() -> None:
    meter = ShardMeter(QUOTAS_OFF, 0.0)
    for tick in range(1, 201):  # 100 records of 10 bytes every 50 ms: 2000 records/s
        meter.admit_writes([10] * 100, tick * 0.05)
    bytes_per_s, records_per_s = meter.load(10.0)
    assert records_per_s == pytest.approx(2000, rel=0.05)
    assert bytes_per_s == pytest.approx(20_000, rel=0.05)


def test_stream_tags_override_the_servers_figures() -> None:
    tags = {
        "streamd:quota:write-bytes-per-s": "2048",
        "streamd:quota:read-calls-per-s": "unlimited",
        "team": "payments",
    }
    figures = figures_with_tags(KINESIS_QUOTAS, tags)
    assert figures.write_bytes_per_s == 2048
    assert figures.read_calls_per_s is None
    assert figures.write_records_per_s == 1000
    assert figures_with_tags(QUOTAS_OFF, {"team": "x"}) is QUOTAS_OFF


@pytest.mark.parametrize(
    "tags",
    [
        {"streamd:quota:write-bytes-per-s": "0"},
        {"streamd:quota:write-bytes-per-s": "-5"},
        {"streamd:quota:write-bytes-per-s": "fast"},
        {"streamd:quota:write-bytes-per-s": "99999999999999999"},
        {"streamd:quota:writes": "5"},
    ],
)
def test_malformed_quota_tags_are_refused(tags: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError):
        check_quota_tags(tags)


def test_native_quotas_become_tags() -> None:
    tags = quota_tags({"write_bytes_per_s": 1024, "read_calls_per_s": "unlimited"})
    assert tags == {
        "streamd:quota:write-bytes-per-s": "1024",
        "streamd:quota:read-calls-per-s": "unlimited",
    }
    for bad in ({"write_bytes_per_s": 0}, {"writes": 1}, {"write_bytes_per_s": True}):
        with pytest.raises(InvalidArgumentError):
            quota_tags(bad)


def test_the_book_renews_a_meter_when_figures_change_and_prunes_gone_shards() -> None:
    book = QuotaBook()
    one = QuotaFigures(write_records_per_s=1)
    meter = book.meter("s1", "shard-0", one, 0.0)
    assert book.meter("s1", "shard-0", one, 1.0) is meter
    assert book.meter("s1", "shard-0", QuotaFigures(write_records_per_s=2), 1.0) is not meter
    book.meter("s1", "shard-1", one, 0.0)
    assert book.prune({("s1", "shard-1")}) == 1 and len(book) == 1
