"""The simulator's checker: Jepsen's properties for a Kafka-like log, checked as the run goes.

It watches effects as the world carries them out and looks at the replicas' stores (the ground
truth no replica can fake):

* an ack (``WriteDone``) names a batch that is, at that moment, durable on a majority of the
  replica stores at the acked offset (the stores of the replica sets from the batch's own
  epoch to the acking leader's: after a replica-set change a batch committed before it may
  sit on one member of the new set and on the old member, until the new one catches up):
  no ack before a majority, none from a deposed leader that lost its batch; and one batch
  is acked at one offset only;
* every high watermark a leader publishes covers batches durable on a majority; the batches
  below it enter the *committed* map, where an offset never changes its batch and a batch never
  moves to another offset;
* every replica's log below its own high watermark equals the committed map (identical
  committed prefixes), and no truncation cuts a committed batch (except the damaged suffix a
  replica drops to refetch it, which it then does not vouch for);
* a replica's high watermark never goes back (within one run of its process);
* a reader is only ever served committed batches, as committed;
* at the end, after the faults heal: every acked batch sits at its offset in the final log,
  every replica holds the same log, and no batch is there twice.

A failed check raises ``Violation``; the world turns it into a failed run with its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ...replication.quorum import majority_of
from ...storage.logstore import StoredBatch
from ...storage.memlog import MemoryLog
from .node import Node

Ident = tuple[int, int]  # (producer id, producer seq); control batches: (-epoch, 0)


class Violation(Exception):
    pass


def ident(batch: StoredBatch) -> Ident:
    return (-batch.epoch, 0) if batch.control else (batch.producer_id, batch.producer_seq)


class Checker:
    def __init__(
        self,
        logs: Sequence[MemoryLog],
        replicas: int | None = None,
        sets_between: Callable[[int, int], Iterable[int]] | None = None,
    ) -> None:
        """``logs``: every node's, by node id; ``replicas``: the replica set's size (default
        every log); ``sets_between(first, last)``: the node ids of the sets epochs ``first``
        to ``last`` were handed out with (default every node)."""
        self.logs = logs
        size = len(logs) if replicas is None else replicas
        self.majority = majority_of(size)
        self.sets_between = sets_between or (lambda first, last: range(len(logs)))
        self.committed: dict[int, tuple[Ident, int]] = {}  # offset -> (batch, its base)
        self.committed_end = 0
        self.where: dict[Ident, int] = {}
        self.acked: dict[Ident, int] = {}
        self.published: dict[int, int] = {}  # node -> last hw it published as leader
        self.checked_to: dict[int, int] = {}
        self.reads = 0
        self.acks = 0
        # Durable copies a replica lost to injected damage, per replica: offset -> batch. They
        # were true when acked; the protocol stays safe without them (a damaged replica votes
        # in no fencing majority until it has refetched them), so they still count as copies.
        self.damaged: list[dict[int, Ident]] = [{} for _ in logs]

    def fail(self, what: str) -> None:
        raise Violation(what)

    # -- ground truth ------------------------------------------------------------------------

    def durable_copies(self, offset: int, want: Ident, first: int, last: int) -> int:
        """Durable copies of ``want`` at ``offset`` in the sets of epochs ``first``..``last``."""
        copies = 0
        for node_id in sorted(set(self.sets_between(first, last))):
            log, lost = self.logs[node_id], self.damaged[node_id]
            found = log.batch_at(offset)
            if found is not None and found[1] and found[0].base_offset == offset:
                copies += ident(found[0]) == want
            else:
                copies += lost.get(offset) == want
        return copies

    def _commit(self, batch: StoredBatch) -> None:
        """Every offset of ``batch`` now names it, for good."""
        batch_ident = ident(batch)
        offset = batch.base_offset
        for at in range(offset, batch.next_offset):
            known = self.committed.get(at)
            if known is not None and known != (batch_ident, offset):
                self.fail(f"offset {at} committed as {known}, now as {(batch_ident, offset)}")
            self.committed[at] = (batch_ident, offset)
        placed = self.where.get(batch_ident)
        if placed is not None and placed != offset and batch_ident[0] > 0:
            self.fail(f"batch {batch_ident} committed at offsets {placed} and {offset}")
        self.where[batch_ident] = offset

    def committed_at(self, batch: StoredBatch) -> bool:
        want = (ident(batch), batch.base_offset)
        return all(
            self.committed.get(at) == want for at in range(batch.base_offset, batch.next_offset)
        )

    # -- effects -----------------------------------------------------------------------------

    def on_hw(self, node: Node, hw: int, leading: bool) -> None:
        if not leading:
            self.check_prefix(node)
            return
        start = self.published.get(node.id, 0)
        offset = self._first_base_at_or_after(node.log, start)
        while offset < hw:
            found = node.log.batch_at(offset)
            if found is None:
                self.fail(f"n{node.id} published hw {hw} beyond its log end {node.log.log_end()}")
                return
            batch = found[0]
            self._commit(batch)
            offset = batch.next_offset
        last = node.log.batch_at(hw - 1)
        assert last is not None
        copies = self.durable_copies(
            last[0].base_offset, ident(last[0]), last[0].epoch, self._epoch(node)
        )
        if copies < self.majority:
            self.fail(f"n{node.id} moved hw to {hw} with {copies} durable copies of its last batch")
        self.published[node.id] = hw
        self.committed_end = max(self.committed_end, hw)
        self.check_prefix(node)

    def on_ack(self, node: Node, base_offset: int) -> None:
        found = node.log.batch_at(base_offset)
        if found is None or found[0].base_offset != base_offset:
            self.fail(f"n{node.id} acked offset {base_offset}, which its log does not hold")
            return
        batch_ident = ident(found[0])
        copies = self.durable_copies(base_offset, batch_ident, found[0].epoch, self._epoch(node))
        if copies < self.majority:
            self.fail(f"n{node.id} acked {batch_ident}@{base_offset} with {copies} durable copies")
        earlier = self.acked.get(batch_ident)
        if earlier is not None and earlier != base_offset:
            self.fail(f"{batch_ident} acked at offsets {earlier} and {base_offset}")
        if not self.committed_at(found[0]):
            self.fail(f"{batch_ident} acked at {base_offset} but not committed there")
        self.acked[batch_ident] = base_offset
        self.acks += 1

    @staticmethod
    def _epoch(node: Node) -> int:
        return node.replica.epoch if node.replica is not None else node.meta.epoch

    def on_read(self, batches: Sequence[StoredBatch]) -> None:
        for batch in batches:
            if not self.committed_at(batch):
                known = self.committed.get(batch.base_offset)
                self.fail(f"a reader got {ident(batch)}@{batch.base_offset}; committed: {known}")
            self.reads += 1

    def on_truncate(self, node: Node, offset: int, repairing: bool) -> None:
        if repairing:
            self.checked_to[node.id] = min(self.checked_to.get(node.id, 0), offset)
            lost = self.damaged[node.id]
            for batch in node.log.batches():
                found = node.log.batch_at(batch.base_offset)
                if batch.base_offset >= offset and found is not None and found[1]:
                    lost[batch.base_offset] = ident(batch)
            return
        self.published[node.id] = min(self.published.get(node.id, 0), offset)
        found = node.log.batch_at(offset)
        if found is None or offset >= self.committed_end:
            return
        if self.committed_at(found[0]):
            self.fail(f"n{node.id} truncated committed batch {ident(found[0])}@{offset}")

    def on_restart(self, node: Node) -> None:
        self.checked_to[node.id] = min(self.checked_to.get(node.id, 0), node.log.log_end())
        self.published.pop(node.id, None)

    def check_prefix(self, node: Node) -> None:
        """The node's log below its hw (what it has of it) equals the committed map."""
        replica = node.replica
        if replica is None:
            return
        end = min(replica.hw, node.log.log_end())
        offset = self.checked_to.get(node.id, 0)
        offset = self._first_base_at_or_after(node.log, offset)
        while offset < end:
            found = node.log.batch_at(offset)
            assert found is not None
            batch = found[0]
            if not self.committed_at(batch):
                want = self.committed.get(batch.base_offset)
                self.fail(
                    f"n{node.id} holds {ident(batch)}@{batch.base_offset} below its hw "
                    f"{replica.hw}; committed there: {want}"
                )
            offset = batch.next_offset
        self.checked_to[node.id] = max(self.checked_to.get(node.id, 0), min(offset, end))

    @staticmethod
    def _first_base_at_or_after(log: MemoryLog, offset: int) -> int:
        found = log.batch_at(offset)
        if found is None or found[0].base_offset == offset:
            return offset
        return found[0].next_offset

    # -- the end -----------------------------------------------------------------------------

    def final(self, nodes: Sequence[Node], hw: int) -> None:
        reference = nodes[0].log.read(0, 1 << 30) if hw else []
        final: dict[int, Ident] = {}
        seen: dict[Ident, int] = {}
        for batch in reference:
            if batch.base_offset >= hw:
                break
            final[batch.base_offset] = ident(batch)
            if batch.producer_id and ident(batch) in seen:
                self.fail(f"{ident(batch)} in the final log twice")
            seen[ident(batch)] = batch.base_offset
        for node in nodes[1:]:
            mine = [b for b in node.log.read(0, 1 << 30) if b.base_offset < hw]
            if [(b.base_offset, b.identity()) for b in mine] != [
                (b.base_offset, b.identity()) for b in reference if b.base_offset < hw
            ]:
                self.fail(f"n{node.id}'s log differs from n{nodes[0].id}'s below hw {hw}")
        for batch_ident, base in set(self.committed.values()):
            if base < hw and final.get(base) != batch_ident:
                self.fail(f"committed {batch_ident}@{base} is not in the final log")
        for batch_ident, offset in self.acked.items():
            if final.get(offset) != batch_ident:
                self.fail(f"acked {batch_ident}@{offset} lost: final log has {final.get(offset)}")
