"""The replication seam of the commit pipeline.

A shard's appender calls ``Committer.commit`` after its batches are on the local disk and before
it acknowledges anyone: the batches commit when the committer returns. Single-node mode uses
``LocalCommitter``: the local fsync is the whole quorum (a quorum of one), so it returns at once.
Cluster mode will plug in a committer that ships the batches to the shard's followers and returns
when a majority has fsynced them; the high watermark then travels with the next append.
"""

from __future__ import annotations

from typing import Protocol


class Committer(Protocol):
    async def commit(
        self, shard_key: str, leader_epoch: int, batches: list[bytes], end_offset: int
    ) -> None:
        """Return once ``batches`` (ending before ``end_offset``) are durable on a write quorum.

        Raises a StreamdError (e.g. NotLeader, once replication exists) if they cannot commit.
        """
        ...


class LocalCommitter:
    """Quorum of one: the appender's own fsync already made the batches durable."""

    async def commit(
        self, shard_key: str, leader_epoch: int, batches: list[bytes], end_offset: int
    ) -> None:
        assert batches and end_offset > 0
