"""Per-shard data replication: a pure state machine per replica, and the commit seam.

``Replica`` (replica.py) is the protocol core: events in, effects out, no I/O and no trio
(``tests/unit/test_replication_pure.py`` scans the imports). Its roles and transitions are one
table (roles.py); its messages, events and effects are plain values (messages.py). The trio
driver and the transport that put it on the wire come with the cluster's part 3.
``Committer`` (committer.py) is the seam the shard pipeline commits through: it runs beside the
local sync (the leader's own vote, ``LocalVote``) and decides the quorum; today's is
``LocalCommitter``, a quorum of one.
The protocol is described in docs/replication.md.
"""

from __future__ import annotations

from .committer import Committer, LocalCommitter, LocalVote, Proposal
from .errors import ReplicationBroken
from .meta import ReplicaMeta
from .replica import Replica, ReplicaConfig
from .roles import Role

__all__ = [
    "Committer",
    "LocalCommitter",
    "LocalVote",
    "Proposal",
    "Replica",
    "ReplicaConfig",
    "ReplicaMeta",
    "ReplicationBroken",
    "Role",
]
