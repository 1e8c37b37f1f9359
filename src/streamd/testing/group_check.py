"""The consumer-group checker of scenario 11 (scenarios/group_failover.py): pure, no I/O.

Given the records the writer had acknowledged, the records the group's workers processed (in
the one order they were handed over, across all workers), and every checkpoint the group's
description showed per shard (in the order they were polled), it finds:

- ``missing``: an acknowledged record never processed;
- ``out_of_order``: a record processed for the first time after a later record of the same key
  had been (per-key order broken: a child read before its parent was finished, a skip);
  processing a record again is allowed (at least once: a lease that moves replays from the
  last checkpoint);
- ``checkpoint_back``: a shard's checkpoint going back, or vanishing once set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streamd_client.model import parse_sequence

SHARD_END = "SHARD_END"
RecordId = tuple[str, int]  # (partition key, the writer's counter for that key)


@dataclass
class GroupReport:
    acked: int = 0
    processed: int = 0
    missing: list[RecordId] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    checkpoint_back: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.out_of_order or self.checkpoint_back)

    def text(self) -> str:
        verdict = "OK" if self.ok else "VIOLATIONS"
        lines = [
            f"{verdict}: acknowledged {self.acked}, processed {self.processed} "
            f"(copies included), missing {len(self.missing)}, out of order "
            f"{len(self.out_of_order)}, checkpoints gone back {len(self.checkpoint_back)}"
        ]
        lines += [f"  missing {key}#{counter}" for key, counter in self.missing[:10]]
        lines += [f"  {line}" for line in (self.out_of_order + self.checkpoint_back)[:10]]
        return "\n".join(lines)


def _rank(checkpoint: str) -> tuple[int, int]:
    return (1 << 62, 0) if checkpoint == SHARD_END else parse_sequence(checkpoint)


def check_group(
    acked: Iterable[RecordId],
    processed: Sequence[RecordId],
    checkpoints: Mapping[str, Sequence[str | None]],
) -> GroupReport:
    acked_set = set(acked)
    report = GroupReport(acked=len(acked_set), processed=len(processed))
    seen: set[RecordId] = set()
    newest: dict[str, int] = {}
    for key, counter in processed:
        if (key, counter) in seen:
            continue  # a replay after a lease moved
        seen.add((key, counter))
        if counter < newest.get(key, -1):
            report.out_of_order.append(f"{key}#{counter} processed first after {key}#{newest[key]}")
        newest[key] = max(newest.get(key, -1), counter)
    report.missing = sorted(acked_set - seen)
    for shard_id, shown in checkpoints.items():
        last: str | None = None
        for checkpoint in shown:
            if last is not None and (checkpoint is None or _rank(checkpoint) < _rank(last)):
                report.checkpoint_back.append(f"{shard_id}: checkpoint {last} then {checkpoint}")
            if checkpoint is not None:
                last = checkpoint if last is None or _rank(checkpoint) >= _rank(last) else last
    return report
