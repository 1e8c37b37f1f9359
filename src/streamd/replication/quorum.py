"""The commit rule and the leader's lease, as pure functions of what the leader has heard.

A batch commits when a majority of the replica set (the leader counts as one) has it durable,
and only from the moment a batch of the leader's own epoch is among the committed: an older
epoch's batch that sits on a majority may still be overwritten by a leader that never had it
(the "figure 8" case of the Raft paper), until a current-epoch batch after it commits.
"""

from __future__ import annotations

from collections.abc import Iterable


def majority_of(replica_count: int) -> int:
    assert replica_count > 0
    return replica_count // 2 + 1


def quorum_end(durable_ends: Iterable[int], replica_count: int) -> int:
    """The largest offset below which a majority of ``replica_count`` replicas is durable.

    Replicas not heard from count as durable up to 0.
    """
    ends = sorted(durable_ends, reverse=True)
    assert len(ends) <= replica_count
    need = majority_of(replica_count)
    return ends[need - 1] if len(ends) >= need else 0


def commit_point(quorum: int, epoch_start_offset: int, hw: int) -> int:
    """The new high watermark: the quorum's end once it covers the current epoch's first batch
    (which sits at ``epoch_start_offset``), never lower than it already was."""
    if quorum <= epoch_start_offset:
        return hw
    return max(hw, quorum)


def lease_holds(heard_ms: Iterable[int], replica_count: int, now_ms: int, lease_ms: int) -> bool:
    """True while a majority (the leader's own entry is ``now_ms``) was heard within the lease.

    Safety never rests on this (epochs do that); it only stops a cut-off leader from taking
    writes and serving reads it can no longer vouch for.
    """
    recent = sum(1 for t in heard_ms if now_ms - t < lease_ms)
    return recent >= majority_of(replica_count)
