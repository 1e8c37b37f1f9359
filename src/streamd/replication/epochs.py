"""The leader-epoch history of a log and the questions replication asks of it (KIP-101).

The history is the list of ``EpochStart`` (epoch, first offset), ascending, rebuilt from batch
headers. Two logs that hold a batch of the same epoch at the same offset hold the same batch and
the same prefix before it: one leader wrote each epoch's batches, once, in order, and copies
never change them. So comparing epochs at one offset compares whole prefixes, and divergence is
found by walking epoch boundaries instead of comparing batches.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ..storage.logstore import EpochStart

NO_EPOCH = 0  # the epoch "before" offset 0; real epochs start at 1


def last_epoch(history: Sequence[EpochStart]) -> int:
    return history[-1].epoch if history else NO_EPOCH


def epoch_at(history: Sequence[EpochStart], offset: int) -> int:
    """The epoch of the batch holding ``offset`` (NO_EPOCH for offset -1, i.e. before 0)."""
    if offset < 0:
        return NO_EPOCH
    at = bisect.bisect_right([e.start_offset for e in history], offset) - 1
    assert at >= 0, (offset, history)
    return history[at].epoch


def start_of_epoch_at(history: Sequence[EpochStart], offset: int) -> int:
    """The first offset of the epoch that holds ``offset``."""
    at = bisect.bisect_right([e.start_offset for e in history], offset) - 1
    assert at >= 0, (offset, history)
    return history[at].start_offset


def end_for_epoch(history: Sequence[EpochStart], log_end: int, epoch: int) -> tuple[int, int]:
    """(the largest epoch <= ``epoch`` in this log, the offset where it ends here).

    (NO_EPOCH, 0) if every epoch here is newer: nothing can match.
    """
    found = NO_EPOCH
    for i, start in enumerate(history):
        if start.epoch > epoch:
            return (found, start.start_offset) if found != NO_EPOCH else (NO_EPOCH, 0)
        found = start.epoch
        if i == len(history) - 1:
            return found, log_end
    return NO_EPOCH, 0


def match_point(
    history: Sequence[EpochStart], log_end: int, other_end: int, other_last_epoch: int
) -> int:
    """Where a log that ends at ``other_end`` with ``other_last_epoch`` may still match this one.

    Both logs agree below the returned offset *if* their epochs agree just before it; the caller
    checks that, and the other side backs up further (``backed_up_hint``) when they do not.
    """
    _, end = end_for_epoch(history, log_end, other_last_epoch)
    return min(other_end, end)


def backed_up_hint(history: Sequence[EpochStart], log_end: int, offset: int) -> tuple[int, int]:
    """Our epochs disagree with the other log just before ``offset``: the (end, last epoch) of
    the longest prefix of ours that may still match, ending at an epoch boundary before it."""
    point = min(offset, log_end)
    if point == 0:
        return 0, NO_EPOCH
    start = start_of_epoch_at(history, point - 1)
    return start, epoch_at(history, start - 1)


def truncated(history: Sequence[EpochStart], offset: int) -> list[EpochStart]:
    return [e for e in history if e.start_offset < offset]


def extended(history: Sequence[EpochStart], base_offset: int, epoch: int) -> list[EpochStart]:
    out = list(history)
    if not out or out[-1].epoch != epoch:
        assert not out or out[-1].epoch < epoch, (out, epoch)
        out.append(EpochStart(epoch, base_offset))
    return out
