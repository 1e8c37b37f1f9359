"""Offline comparison of one shard's replica logs across nodes: is the committed prefix identical?

After a fault scenario stops its nodes, each node's replica log of a shard is a directory of
segment files (``FileLogStore`` / ``ShardLog``). ``snapshot_log`` opens one (running recovery,
as a restart would: a torn tail is cut) and reduces it to a list of ``BatchDigest`` (base offset,
next offset, leader epoch, BLAKE2b of the batch's exact stored bytes). ``compare_replicas`` is
pure: given every replica's snapshot and the shard's committed end (what the final read returned
through the leader), it demands

| finding          | when                                                                   |
|------------------|------------------------------------------------------------------------|
| divergent        | two replicas hold different bytes (or different batch boundaries) at an |
|                  | offset below the committed end                                         |
| under_replicated | fewer than a majority of the replicas hold the whole committed prefix   |
| damaged          | a replica's log has a batch failing its CRC below the committed end    |

A replica may be *shorter* than the committed end (a follower that had not caught up when the
nodes stopped): only the part it holds is compared. Above the committed end replicas may differ
(an uncommitted tail a new leader truncates later); that is not a finding.

``range_digests`` gives a checksum per offset range per replica (what the scenario prints, and
what "compare checksums per range across nodes" in issue 13 asks for); a mismatching range is
then narrowed to its first differing batch by the per-batch comparison.

``cut_tail`` is the one piece of file surgery: it cuts an unsynced-looking tail off a stopped
node's active segment (scenario 5, coordinated power loss), never below a given offset.

Why the stored bytes and not the decoded records: replication must carry stored batches as they
are (never re-encoded), so every replica's committed prefix is byte-identical, header included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError

from ..storage.config import LogConfig
from ..storage.log import ShardLog

RANGE_OFFSETS_DEFAULT: Final = 10_000
_READ_BYTES_MAX: Final = 4 << 20
_DIGEST_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class BatchDigest:
    """One stored batch: offsets ``[base_offset, next_offset)``, written at leader ``epoch``."""

    base_offset: int
    next_offset: int
    epoch: int
    digest: bytes  # BLAKE2b-128 of the batch's stored bytes


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    """What one node's replica log of one shard holds, offline."""

    node: str
    batches: tuple[BatchDigest, ...]
    start_offset: int = 0
    damaged_at: int | None = None  # base offset of the first batch failing its CRC

    @property
    def end(self) -> int:
        """The offset after the last readable batch (the damaged part excluded)."""
        return self.batches[-1].next_offset if self.batches else self.start_offset


@dataclass
class ReplicaFindings:
    divergent: list[str] = field(default_factory=list)
    under_replicated: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    compared_batches: int = 0


def digest_of(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest()


def snapshot_log(directory: Path, node: str) -> ReplicaSnapshot:
    """Open ``directory`` as a shard log (recovery runs: a torn tail is cut) and digest every
    batch. Stops at the first batch failing its CRC (``damaged_at``). Raises OSError."""
    log = ShardLog.open(directory, LogConfig(fsync=True))
    try:
        return _digest_all(log, node)
    finally:
        log.close(clean=False)  # leave the files as a crash would; the next start recovers


def _digest_all(log: ShardLog, node: str) -> ReplicaSnapshot:
    batches: list[BatchDigest] = []
    offset, end = log.start_offset, log.next_offset
    while offset < end:
        try:
            got = log.read(offset, _READ_BYTES_MAX, end)
        except CorruptDataError as exc:
            damaged = int(exc.details.get("base_offset", offset))
            return ReplicaSnapshot(node, tuple(batches), log.start_offset, damaged)
        if not got:
            break
        for data in got:
            header = batchfmt.parse_header(data)
            batches.append(
                BatchDigest(
                    header.base_offset, header.next_offset, header.leader_epoch, digest_of(data)
                )
            )
            offset = header.next_offset
    return ReplicaSnapshot(node, tuple(batches), log.start_offset)


def compare_replicas(
    shard_id: str,
    snapshots: Sequence[ReplicaSnapshot],
    committed_end: int,
    *,
    replica_count: int | None = None,
) -> ReplicaFindings:
    """Check the replicas of ``shard_id`` agree below ``committed_end`` (pure; module doc).

    ``replica_count`` is the shard's replication factor (default: the snapshots given); a
    majority of it must hold the whole committed prefix.
    """
    findings = ReplicaFindings()
    count = replica_count if replica_count is not None else len(snapshots)
    majority = count // 2 + 1
    holding = [s.node for s in snapshots if s.end >= committed_end]
    if len(holding) < majority:
        ends = {s.node: s.end for s in snapshots}
        findings.under_replicated.append(
            f"{shard_id}: committed end {committed_end}, held whole by {sorted(holding)} "
            f"(need {majority} of {count}); replica ends {ends}"
        )
    for snapshot in snapshots:
        if snapshot.damaged_at is not None and snapshot.damaged_at < committed_end:
            findings.damaged.append(f"{shard_id}@{snapshot.damaged_at} on {snapshot.node}")
    by_base: dict[int, dict[str, BatchDigest]] = {}
    for snapshot in snapshots:
        for batch in snapshot.batches:
            if batch.base_offset >= committed_end:
                break
            by_base.setdefault(batch.base_offset, {})[snapshot.node] = batch
    for base in sorted(by_base):
        holders = by_base[base]
        findings.compared_batches += 1
        if len({(b.next_offset, b.epoch, b.digest) for b in holders.values()}) > 1:
            detail = ", ".join(
                f"{node}: epoch {b.epoch} [{b.base_offset},{b.next_offset}) {b.digest.hex()[:12]}"
                for node, b in sorted(holders.items())
            )
            findings.divergent.append(f"{shard_id}@{base}: {detail}")
        for snapshot in snapshots:  # a replica covering ``base`` must have a batch starting there
            if snapshot.node not in holders and _covers(snapshot, base):
                findings.divergent.append(
                    f"{shard_id}@{base}: {snapshot.node} has no batch starting here "
                    f"(batch boundaries differ)"
                )
    return findings


def _covers(snapshot: ReplicaSnapshot, offset: int) -> bool:
    return snapshot.start_offset <= offset < snapshot.end


def range_digests(
    snapshot: ReplicaSnapshot, end: int, range_offsets: int = RANGE_OFFSETS_DEFAULT
) -> dict[int, str]:
    """Range start -> a checksum of the batches starting in ``[start, start + range_offsets)``
    below ``end`` (16 hex digits), for one replica."""
    assert range_offsets > 0
    grouped: dict[int, hashlib.blake2b] = {}
    for batch in snapshot.batches:
        if batch.base_offset >= end:
            break
        start = batch.base_offset - batch.base_offset % range_offsets
        hasher = grouped.setdefault(start, hashlib.blake2b(digest_size=8))
        hasher.update(batch.base_offset.to_bytes(8, "big") + batch.digest)
    return {start: hasher.hexdigest() for start, hasher in grouped.items()}


def range_table(
    snapshots: Sequence[ReplicaSnapshot],
    end: int,
    range_offsets: int = RANGE_OFFSETS_DEFAULT,
) -> list[str]:
    """One line per offset range: each replica's checksum and whether they all agree."""
    per_node: Mapping[str, dict[int, str]] = {
        s.node: range_digests(s, end, range_offsets) for s in snapshots
    }
    starts = sorted({start for digests in per_node.values() for start in digests})
    lines = []
    for start in starts:
        cells = {node: digests.get(start, "-") for node, digests in per_node.items()}
        present = {value for value in cells.values() if value != "-"}
        verdict = "same" if len(present) <= 1 else "DIFFERENT"
        body = " ".join(f"{node}={value}" for node, value in sorted(cells.items()))
        lines.append(f"[{start},{min(end, start + range_offsets)}) {verdict}: {body}")
    return lines


def cut_tail(directory: Path, keep_end: int, cut_bytes: int) -> int:
    """Cut up to ``cut_bytes`` off the active (last) segment of the log in ``directory``, never
    into the batch holding offset ``keep_end - 1`` or any before it: what a crash may do to
    an unsynced tail. Returns the bytes cut (0 when the floor is at the end). For offline use
    only (the node is stopped). Raises OSError."""
    segments = sorted(directory.glob("*.log"))
    if not segments or cut_bytes <= 0:
        return 0
    active = segments[-1]
    data = active.read_bytes()
    floor, at = 0, 0
    while at + batchfmt.HEADER_BYTES <= len(data):
        try:
            header = batchfmt.parse_header(data, at)
        except CorruptDataError:
            break
        if header.base_offset >= keep_end or at + header.length > len(data):
            break
        at += header.length
        floor = at
    size = max(floor, len(data) - cut_bytes)
    if size < len(data):
        with active.open("r+b") as file:
            file.truncate(size)
    return len(data) - size
