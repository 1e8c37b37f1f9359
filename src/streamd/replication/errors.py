"""The replication core's errors: one, for a broken invariant.

Expected conditions (not the leader, a timeout, a full disk) are not exceptions here: they are
``WriteFailed`` / ``ReadFailed`` effects carrying the wire code of streamd_client.errors, which
the driver turns into the typed error for the client. ``ReplicationBroken`` means the protocol's
own invariants failed (truncating below the high watermark, a high watermark going back): the
node must stop serving that shard, and the simulator reports it with its seed.
"""

from __future__ import annotations


class ReplicationBroken(AssertionError):
    """A replication invariant does not hold; ``what`` says which."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def require(condition: bool, what: str) -> None:
    if not condition:
        raise ReplicationBroken(what)


class MalformedMessage(ValueError):
    """A replication envelope from the wire is not one we accept (wrong shape, type or range,
    a batch failing its checksum, batches that do not follow each other). The only exception
    ``codec.decode_envelope`` raises for any input; the transport drops the envelope and counts
    it (the protocol resends what it needs)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
