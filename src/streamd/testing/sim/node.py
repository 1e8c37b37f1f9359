"""One simulated node: its log, its stored replica metadata, and the replica running on it
(None while it is down). Its own module so that the checker can name it without importing
world.py (which imports the checker).
"""

from __future__ import annotations

from ...replication.meta import ReplicaMeta
from ...replication.replica import Replica
from ...replication.roles import Role
from ...storage.memlog import MemoryLog


class Node:
    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.log = MemoryLog()
        self.meta = ReplicaMeta()
        self.replica: Replica | None = None
        self.incarnation = 0
        self.paused_until = 0
        self.stall_until = 0
        self.full_count = 0
        self.lost = False  # lost for good (reconfig): never restarted
        self.sync_running = False
        self.sync_again: int | None = None  # generation of a sync asked for while one ran
        # The role as of the effect being carried out (RoleChanged effects, in order): a step
        # may commit and then step down, and its HighWatermark was a leader's.
        self.role = Role.FOLLOWER.value

    @property
    def alive(self) -> bool:
        return self.replica is not None
