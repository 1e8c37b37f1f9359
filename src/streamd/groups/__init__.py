"""Consumer groups: a pure coordinator per (stream, group) and the trio service around it.

``coordinator.Coordinator`` is the state machine (no I/O); ``assign`` computes balanced, sticky
targets; ``state`` holds the value types and stored documents; ``service`` owns one coordinator
per group, persists through the MetaStore, and runs the expiry timer. See docs/consumer-groups.md.
"""

from .coordinator import Answer, Coordinator, Event, Grant, Ready
from .state import SHARD_END, Checkpoint, GroupDoc, Lease, Member, ShardInfo

__all__ = [
    "SHARD_END",
    "Answer",
    "Checkpoint",
    "Coordinator",
    "Event",
    "Grant",
    "GroupDoc",
    "Lease",
    "Member",
    "Ready",
    "ShardInfo",
]
