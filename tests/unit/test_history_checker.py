"""The fault-scenario history checker (streamd.testing.history) against hand-built histories:
every kind of violation it must catch, and the indeterminate cases it must allow."""

from __future__ import annotations

import pytest

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


# -- the cluster checks (issue 13): each one shown failing on a planted bug ----------------------


def test_plain_put_copies_are_allowed_but_idempotent_copies_are_not() -> None:
    history = history_of(2)
    history.record_sent("p", 0, make_data("p", 0, 40), at_least_once=True)
    history.record_ack("p", 0, SHARD, seq(3))
    found = [
        *found_of(history),
        Seen(SHARD, seq(2), "p", history.sent[("p", 0)]),  # the first try, its answer lost
        Seen(SHARD, seq(3), "p", history.sent[("p", 0)]),  # the retry, acknowledged
    ]
    report = check(history, {SHARD: found})
    assert report.ok, report.summary()
    assert report.duplicates_allowed == 1
    planted = [*found, Seen(SHARD, seq(4), "k", history.sent[("k", 0)])]
    report = check(history, {SHARD: planted})
    assert report.duplicated == [("k", 0)]


def test_plain_put_whose_every_copy_vanished_is_lost() -> None:
    history = History()
    history.record_sent("p", 0, make_data("p", 0, 40), at_least_once=True)
    history.record_failure("p", 0, "SHARD_UNAVAILABLE")
    history.record_ack("p", 0, SHARD, seq(0))  # the writer's retry got through
    assert not history.failed
    report = check(history, {SHARD: []})
    assert report.lost == [("p", 0)]


def test_one_offset_two_records_is_caught() -> None:
    history = history_of(2)
    history.record_sent("x", 0, make_data("x", 0, 40))
    history.record_ack("x", 0, SHARD, seq(1))  # a deposed leader acked it at offset 1
    report = check(history, {SHARD: found_of(history)[:2]})
    assert any("ack" in item for item in report.offset_conflict), report.summary()
    assert report.lost == [("x", 0)]


def test_readers_disagreeing_on_an_offset_is_caught() -> None:
    history = history_of(2)
    found = found_of(history)
    history.record_observed(found[0], reader="r1")
    history.record_observed(Seen(SHARD, seq(0), "k", history.sent[("k", 1)]), reader="r2")
    report = check(history, {SHARD: found})
    assert len(report.offset_conflict) == 1 and not report.ok


def test_a_reader_skipping_an_offset_is_caught() -> None:
    history = history_of(5)
    found = found_of(history)
    for seen in (found[0], found[1], found[3], found[4]):  # offset 2 never handed out
        history.record_observed(seen, reader="tail-1")
    report = check(history, {SHARD: found})
    assert report.skipped == [f"tail-1 on {SHARD}: 1 records between 1 and 3"]
    assert not report.retracted


def test_a_reader_starting_past_the_first_record_is_caught() -> None:
    history = history_of(3)
    found = found_of(history)
    history.record_reader_start("tail-1", SHARD, from_start=True)
    history.record_observed(found[1], reader="tail-1")
    report = check(history, {SHARD: found})
    assert len(report.skipped) == 1
    history = history_of(3)
    history.record_reader_start("tail-1", SHARD, from_start=False)
    history.record_observed(found[1], reader="tail-1")
    assert check(history, {SHARD: found}).ok


def test_a_reader_going_back_is_caught() -> None:
    history = history_of(3)
    found = found_of(history)
    for seen in (found[0], found[1], found[1], found[2]):
        history.record_observed(seen, reader="tail-1")
    report = check(history, {SHARD: found})
    assert len(report.went_back) == 1 and not report.skipped


def test_time_to_resume_per_fault_and_shard() -> None:
    other = "shardId-000000000001"
    history = History()
    for n, (sent_at, acked_at, shard) in enumerate(
        [(0.0, 0.01, SHARD), (1.2, 3.5, SHARD), (1.5, 2.9, SHARD), (1.1, 1.3, other)]
    ):
        history.record_sent("k", n, make_data("k", n, 40), at_s=sent_at)
        history.record_ack("k", n, shard, seq(n, 0 if shard == SHARD else 1), at_s=acked_at)
    history.record_fault("kill -9 node1", 1.0, [SHARD, other])
    found = {
        SHARD: [Seen(SHARD, seq(n), "k", history.sent[("k", n)]) for n in range(3)],
        other: [Seen(other, seq(3, 1), "k", history.sent[("k", 3)])],
    }
    report = check(history, found)
    assert report.ok, report.summary()
    resumes = {r.shard_id: r.resume_s for r in report.resumes}
    assert resumes[SHARD] == pytest.approx(1.9)  # the earliest ack of a write sent after it
    assert resumes[other] == pytest.approx(0.3)
    assert report.resume_times_s() == [pytest.approx(1.9)]
    assert "kill -9 node1: 2 shards, writes resumed after 1.900 s" in report.resume_summary()
    history.record_fault("kill -9 node2", 4.0, [SHARD])
    report = check(history, found)
    assert report.not_resumed == []  # nothing was sent after it: no verdict
    history.record_sent("k", 9, make_data("k", 9, 40), at_s=4.5)  # sent, never acked
    report = check(history, found)
    assert report.not_resumed == ["kill -9 node2: " + SHARD]
    assert "never on" in report.resume_summary()


def test_a_refused_read_and_a_scenario_violation_fail_the_check() -> None:
    history = history_of(2)
    found = found_of(history)
    assert check(history, {SHARD: found}).ok
    history.record_refused_read("tail-000", SHARD, "from 5: read skipped offsets 9..9")
    history.record_refused_read("tail-000", SHARD, "from 5: read skipped offsets 9..9")
    report = check(history, {SHARD: found})
    assert report.read_refused == [f"tail-000 on {SHARD} from 5: read skipped offsets 9..9"]
    history = history_of(2)
    history.scenario_violations.append("acks while 2 of 3 nodes were down")
    assert check(history, {SHARD: found}).scenario == ["acks while 2 of 3 nodes were down"]
