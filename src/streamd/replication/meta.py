"""What a replica persists beside its log, and must have on disk before it answers.

``epoch`` is the highest leader epoch the replica has seen: once it is on disk the replica
refuses every message of an older epoch, even after a restart (that is what fencing means).
``generation`` counts truncations of the log, so a leader can tell a follower's report from
before a truncation from one after it. ``repair_to`` is set while the log is being refetched
after damage: the replica acknowledged batches up to there that it no longer has, so until it
holds them again it does not vouch for its log (it votes in no fencing majority and leads
nothing).

The driver writes it atomically and durably (write a temporary file, fsync, rename, fsync the
directory) when it carries out a ``PersistMeta`` effect, before any effect after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaMeta:
    epoch: int = 0
    generation: int = 0
    repair_to: int | None = None

    @property
    def whole(self) -> bool:
        return self.repair_to is None
