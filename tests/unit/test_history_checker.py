"""The fault-scenario history checker (streamd.testing.history) against hand-built histories:
every kind of violation it must catch, and the indeterminate cases it must allow."""

from __future__ import annotations

from streamd.testing import History, Seen, check, make_data, parse_identity
from streamd_client.model import make_sequence

SHARD = "shardId-000000000000"


def seq(offset: int, shard_index: int = 0) -> str:
    return make_sequence(shard_index, offset)


def history_of(count: int, key: str = "k", acked: bool = True) -> History:
    history = History()
    for n in range(count):
        history.record_sent(key, n, make_data(key, n, 40))
        if acked:
            history.record_ack(key, n, SHARD, seq(n))
    return history


def found_of(history: History, key: str = "k") -> list[Seen]:
    return [
        Seen(SHARD, seq(n), key, history.sent[(key, n)])
        for n in range(len(history.sent))
        if (key, n) in history.sent
    ]


def test_make_data_names_its_record_and_is_padded() -> None:
    data = make_data("user-7", 12, 100)
    assert len(data) == 100
    assert parse_identity(data) == ("user-7", 12)
    assert make_data("user-7", 13, 100) != data
    assert parse_identity(b"garbage") is None


def test_a_faithful_log_checks_out() -> None:
    history = history_of(5)
    report = check(history, {SHARD: found_of(history)})
    assert report.ok, report.summary()
    assert (report.acked, report.found, report.indeterminate_found) == (5, 5, 0)


def test_lost_acked_record() -> None:
    history = history_of(5)
    found = found_of(history)
    del found[2]
    report = check(history, {SHARD: found})
    assert report.lost == [("k", 2)] and not report.ok


def test_corrupt_data_and_wrong_key() -> None:
    history = history_of(3)
    found = found_of(history)
    found[1] = found[1]._replace(data=found[1].data[:-1] + b"!")
    found[2] = found[2]._replace(partition_key="other")
    report = check(history, {SHARD: found})
    assert len(report.corrupt) == 2


def test_unknown_record_is_caught() -> None:
    history = history_of(2)
    found = [*found_of(history), Seen(SHARD, seq(2), "k", b"half-written garbage")]
    report = check(history, {SHARD: found})
    assert len(report.unknown) == 1 and not report.ok


def test_duplicate_is_caught() -> None:
    history = history_of(2)
    found = found_of(history)
    found.append(Seen(SHARD, seq(2), "k", history.sent[("k", 1)]))
    report = check(history, {SHARD: found})
    assert report.duplicated == [("k", 1)]


def test_reordered_key_is_caught() -> None:
    history = history_of(3, acked=False)
    found = [
        Seen(SHARD, seq(0), "k", history.sent[("k", 0)]),
        Seen(SHARD, seq(1), "k", history.sent[("k", 2)]),
        Seen(SHARD, seq(2), "k", history.sent[("k", 1)]),
    ]
    report = check(history, {SHARD: found})
    assert len(report.reordered) == 1


def test_moved_record_and_non_monotonic_sequences() -> None:
    history = history_of(2)
    found = [
        Seen(SHARD, seq(5), "k", history.sent[("k", 0)]),
        Seen(SHARD, seq(1), "k", history.sent[("k", 1)]),
    ]
    report = check(history, {SHARD: found})
    assert len(report.moved) == 1
    assert len(report.non_monotonic) == 1


def test_indeterminate_records_may_be_present_or_absent() -> None:
    history = history_of(4, acked=False)
    history.record_ack("k", 0, SHARD, seq(0))
    history.record_failure("k", 1, "CONNECTION_LOST")
    history.record_failure("k", 2, "CONNECTION_LOST")
    found = [
        Seen(SHARD, seq(0), "k", history.sent[("k", 0)]),
        Seen(SHARD, seq(1), "k", history.sent[("k", 2)]),
    ]
    report = check(history, {SHARD: found})
    assert report.ok, report.summary()
    assert report.indeterminate_found == 1
    assert report.indeterminate_missing == 2  # counter 1 (failed) and 3 (never answered)


def test_retracted_observation_is_caught() -> None:
    history = history_of(3)
    found = found_of(history)
    for seen in found:
        history.record_observed(seen)
    history.record_observed(Seen(SHARD, seq(3), "k", make_data("k", 9, 40)))
    report = check(history, {SHARD: found})
    assert report.retracted == [f"{SHARD}@{seq(3)}"]


def test_report_serializes() -> None:
    history = history_of(2)
    report = check(history, {SHARD: found_of(history)[:1]})
    document = report.to_dict()
    assert document["ok"] is False and document["lost"] == 1
    assert "lost" in report.summary() and report.to_json().startswith("{")
