"""Epoch-history questions (KIP-101) and the commit rule, as pure functions."""

from __future__ import annotations

from streamd.replication import epochs, quorum
from streamd.storage.logstore import EpochStart

HISTORY = [EpochStart(1, 0), EpochStart(3, 5), EpochStart(4, 9)]  # log end 12


def test_epoch_at_and_last_epoch() -> None:
    assert epochs.last_epoch(HISTORY) == 4
    assert epochs.last_epoch([]) == epochs.NO_EPOCH
    assert [epochs.epoch_at(HISTORY, o) for o in (-1, 0, 4, 5, 8, 9, 11)] == [0, 1, 1, 3, 3, 4, 4]


def test_end_for_epoch_is_the_largest_epoch_not_above_and_its_end() -> None:
    assert epochs.end_for_epoch(HISTORY, 12, 4) == (4, 12)
    assert epochs.end_for_epoch(HISTORY, 12, 3) == (3, 9)
    assert epochs.end_for_epoch(HISTORY, 12, 2) == (1, 5)  # we never had epoch 2
    assert epochs.end_for_epoch(HISTORY, 12, 9) == (4, 12)
    assert epochs.end_for_epoch([EpochStart(2, 0)], 3, 1) == (0, 0)


def test_match_point_and_backing_up_by_epoch_boundaries() -> None:
    # A follower ending at 8 in epoch 2 (a leader we never followed): it may match below 5.
    assert epochs.match_point(HISTORY, 12, 8, 2) == 5
    assert epochs.match_point(HISTORY, 12, 7, 3) == 7
    assert epochs.match_point(HISTORY, 12, 20, 4) == 12
    # Our epoch at 6 disagrees with the other log: back up to where epoch 3 began.
    assert epochs.backed_up_hint(HISTORY, 12, 7) == (5, 1)
    assert epochs.backed_up_hint(HISTORY, 12, 3) == (0, 0)
    assert epochs.backed_up_hint(HISTORY, 12, 0) == (0, 0)


def test_history_after_truncate_and_append() -> None:
    assert epochs.truncated(HISTORY, 9) == HISTORY[:2]
    assert epochs.truncated(HISTORY, 6) == HISTORY[:2]
    assert epochs.extended(HISTORY, 12, 4) == HISTORY
    assert epochs.extended(HISTORY, 12, 6) == [*HISTORY, EpochStart(6, 12)]


def test_quorum_end_is_the_majority_th_largest_durable_end() -> None:
    assert quorum.quorum_end([10, 4, 7], 3) == 7
    assert quorum.quorum_end([10, 4], 3) == 4
    assert quorum.quorum_end([10], 3) == 0
    assert quorum.quorum_end([9, 9, 1, 1, 0], 5) == 1
    assert quorum.quorum_end([5], 1) == 5


def test_commit_point_needs_the_current_epoch_and_never_goes_back() -> None:
    assert quorum.commit_point(7, 7, 3) == 3  # the epoch-start batch at 7 is not in yet
    assert quorum.commit_point(8, 7, 3) == 8
    assert quorum.commit_point(8, 7, 9) == 9


def test_lease_needs_a_recent_majority() -> None:
    assert quorum.lease_holds([100, 95, 0], 3, 100, 10)
    assert not quorum.lease_holds([100, 50, 0], 3, 100, 10)
