"""The group checker (scenario 11) on planted bugs: each kind of violation is found, and an
honest history with replays passes."""

from __future__ import annotations

from streamd.testing.group_check import check_group
from streamd_client.model import make_sequence

SEQ = [make_sequence(0, offset) for offset in range(10)]
ACKED = [("a", 0), ("a", 1), ("b", 0), ("a", 2)]


def test_an_honest_history_with_a_replay_passes() -> None:
    processed = [("a", 0), ("b", 0), ("a", 1), ("a", 0), ("a", 1), ("a", 2)]  # replay of a#0..1
    report = check_group(ACKED, processed, {"s0": [None, SEQ[1], SEQ[1], SEQ[4], "SHARD_END"]})
    assert report.ok, report.text()


def test_a_record_never_processed_is_missing() -> None:
    report = check_group(ACKED, [("a", 0), ("a", 1), ("a", 2)], {})
    assert report.missing == [("b", 0)]


def test_a_later_record_of_a_key_first_is_out_of_order() -> None:
    report = check_group(ACKED, [("a", 0), ("a", 2), ("b", 0), ("a", 1)], {})
    assert report.out_of_order == ["a#1 processed first after a#2"]


def test_a_checkpoint_going_back_or_vanishing_is_found() -> None:
    report = check_group([], [], {"s0": [SEQ[3], SEQ[2]], "s1": [SEQ[1], None, SEQ[1]]})
    assert report.checkpoint_back == [
        f"s0: checkpoint {SEQ[3]} then {SEQ[2]}",
        f"s1: checkpoint {SEQ[1]} then None",
    ]
    assert not check_group([], [], {"s2": ["SHARD_END", "SHARD_END"]}).checkpoint_back
    assert check_group([], [], {"s3": ["SHARD_END", SEQ[9]]}).checkpoint_back
