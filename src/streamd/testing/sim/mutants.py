"""Replicas broken on purpose, to prove that the simulator's checks bite.

Each mutant removes one rule of the protocol. ``tests/sim/test_sim_mutants.py`` asserts that
the simulator finds each within a bounded number of seeds; a mutant that survives would mean a
rule the checks cannot see. The production ``Replica`` carries no switch for any of this: the
mutants override its small decision methods.
"""

from __future__ import annotations

from ...replication.replica import Replica
from ...replication.roles import Role
from ...storage.logstore import StoredBatch


class AckBeforeMajority(Replica):
    """Counts the leader's own written log as the quorum: acks before anyone else has it."""

    def quorum_end(self) -> int:
        return self.log_end


class SkipFencing(Replica):
    """Leads as soon as its own epoch is persisted: no majority fenced, no best log taken."""

    def begin_fencing(self) -> None:
        self.become_leader()


class SkipTruncation(Replica):
    """A follower keeps a divergent suffix: any batch it holds at an offset counts as the
    leader's, and the previous batch's epoch is not compared."""

    def prev_matches(self, prev_offset: int, prev_epoch: int) -> bool:
        return prev_offset <= self.log_end

    def holds_same_batch(self, batch: StoredBatch) -> bool:
        return True


class OldEpochCommit(Replica):
    """Commits whatever a majority holds, before a batch of its own epoch has committed."""

    def commit_point(self, quorum: int) -> int:
        return max(self.hw, quorum) if self.role is Role.LEADING else self.hw


class JoinerVotesAtOnce(Replica):
    """A replica just added to the set (empty, or stale from an earlier membership) votes at
    once: in the fencing majority, the choice of the most up-to-date log, commit and lease.
    Only the ``reconfig`` profile changes the set, so only it can find this one."""

    def counts(self, replica: int) -> bool:
        return True


MUTANTS: dict[str, type[Replica]] = {
    "ack_before_majority": AckBeforeMajority,
    "skip_fencing": SkipFencing,
    "skip_truncation": SkipTruncation,
    "old_epoch_commit": OldEpochCommit,
    "joiner_votes_at_once": JoinerVotesAtOnce,
}
