"""A history checker for fault scenarios: what producers were told vs what the log holds.

A scenario records, for every record it tried to write, its identity (partition key, per-key
counter), its exact bytes, and its fate: *acked* (the server acknowledged it at a sequence
number), *failed* (the client gave up; the write may or may not have happened), or still
*pending*. Tailing readers record what they saw while the faults ran. At the end the scenario
reads every shard from the trim horizon and ``check()`` compares:

| check           | violation when                                                        |
|-----------------|-----------------------------------------------------------------------|
| lost            | an acked record is not in the final read (invariant 1)                |
| moved           | an acked record is found at another shard or sequence than its ack    |
| corrupt         | a found record's bytes or key differ from what was sent (byte-exact)  |
| unknown         | a found record was never sent (garbage, or a half-written record)     |
| duplicated      | a record appears twice (idempotent produce must prevent it)           |
| reordered       | one key's counters do not strictly increase along its shard           |
| non-monotonic   | sequence numbers do not strictly increase along a shard (invariant 3) |
| retracted       | a record a reader saw earlier is missing or different now (invariant 2)|

Records whose write failed or never completed are allowed either way (present once, whole, and
in order, or absent): they are counted as "indeterminate found/missing", not as violations.

Record data produced by ``make_data`` embeds the key and counter, so a record identifies itself
even when its partition key or sequence came back wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

RecordId = tuple[str, int]  # (partition key, per-key counter)


class Seen(NamedTuple):
    """One record as a reader returned it (the subset of streamd_client.Record we check)."""

    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


def make_data(key: str, counter: int, size_bytes: int) -> bytes:
    """Record bytes that name their own (key, counter), padded to ``size_bytes`` when longer.

    The padding is derived from the identity, so a flipped byte anywhere is caught.
    """
    head = f"{key}|{counter}|".encode()
    pad_bytes = max(0, size_bytes - len(head))
    seed = (hash_identity(key, counter) % 251).to_bytes(1, "big")
    return head + (seed * pad_bytes)


def hash_identity(key: str, counter: int) -> int:
    value = counter * 1_000_003
    for char in key:
        value = (value * 31 + ord(char)) & 0xFFFF_FFFF
    return value


def parse_identity(data: bytes) -> RecordId | None:
    """The (key, counter) that ``make_data`` put in ``data``, or None if it is not ours."""
    parts = data.split(b"|", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    try:
        return parts[0].decode(), int(parts[1])
    except UnicodeDecodeError:
        return None


@dataclass
class History:
    """What the producers did. Not thread-safe; one event loop writes it."""

    sent: dict[RecordId, bytes] = field(default_factory=dict)
    acked: dict[RecordId, tuple[str, str]] = field(default_factory=dict)  # -> (shard, sequence)
    failed: dict[RecordId, str] = field(default_factory=dict)  # -> error code
    observed: dict[str, list[Seen]] = field(default_factory=dict)  # tailing reads, per shard

    def record_sent(self, key: str, counter: int, data: bytes) -> None:
        self.sent[(key, counter)] = data

    def record_ack(self, key: str, counter: int, shard_id: str, sequence: str) -> None:
        self.acked[(key, counter)] = (shard_id, sequence)

    def record_failure(self, key: str, counter: int, code: str) -> None:
        self.failed[(key, counter)] = code

    def record_observed(self, seen: Seen) -> None:
        self.observed.setdefault(seen.shard_id, []).append(seen)


@dataclass
class CheckReport:
    """The verdict. ``ok`` is False when any violation list is non-empty."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    found: int = 0
    indeterminate_found: int = 0
    indeterminate_missing: int = 0
    observed: int = 0
    lost: list[RecordId] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicated: list[RecordId] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)
    non_monotonic: list[str] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)

    VIOLATIONS = (
        "lost",
        "moved",
        "corrupt",
        "unknown",
        "duplicated",
        "reordered",
        "non_monotonic",
        "retracted",
    )

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in self.VIOLATIONS)

    def to_dict(self, examples_max: int = 10) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "ok": self.ok,
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "found": self.found,
            "indeterminate_found": self.indeterminate_found,
            "indeterminate_missing": self.indeterminate_missing,
            "observed_by_tailing_readers": self.observed,
        }
        for name in self.VIOLATIONS:
            items = getattr(self, name)
            counts[name] = len(items)
            if items:
                counts[f"{name}_examples"] = [str(item) for item in items[:examples_max]]
        return counts

    def summary(self) -> str:
        verdict = "OK" if self.ok else "VIOLATIONS"
        lines = [
            f"{verdict}: sent {self.sent}, acknowledged {self.acked}, failed {self.failed}, "
            f"found {self.found} (indeterminate: {self.indeterminate_found} found, "
            f"{self.indeterminate_missing} missing), tailing readers saw {self.observed}"
        ]
        for name in self.VIOLATIONS:
            items = getattr(self, name)
            if items:
                lines.append(f"  {name}: {len(items)}, e.g. {items[:5]}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check(history: History, found: Mapping[str, Iterable[Seen]]) -> CheckReport:
    """Compare the history with a final read of every shard (``found``: shard id -> records in
    log order). Pure: no I/O."""
    report = CheckReport(
        sent=len(history.sent),
        acked=len(history.acked),
        failed=len(history.failed),
        observed=sum(len(v) for v in history.observed.values()),
    )
    found_lists = {shard_id: list(records) for shard_id, records in found.items()}
    located: dict[RecordId, tuple[str, str]] = {}
    for shard_id, records in found_lists.items():
        _check_shard(history, shard_id, records, report, located)
    for record_id in history.sent:
        if record_id in located:
            continue
        if record_id in history.acked:
            report.lost.append(record_id)
        else:
            report.indeterminate_missing += 1
    _check_observed(history, found_lists, report)
    return report


def _check_shard(
    history: History,
    shard_id: str,
    records: list[Seen],
    report: CheckReport,
    located: dict[RecordId, tuple[str, str]],
) -> None:
    last_counter: dict[str, int] = {}
    last_sequence = -1
    for seen in records:
        report.found += 1
        where = f"{shard_id}@{seen.sequence_number}"
        sequence = int(seen.sequence_number)
        if sequence <= last_sequence:
            report.non_monotonic.append(where)
        last_sequence = sequence
        record_id = parse_identity(seen.data)
        if record_id is None or record_id not in history.sent:
            report.unknown.append(f"{where}: {seen.data[:40]!r}")
            continue
        if seen.data != history.sent[record_id] or seen.partition_key != record_id[0]:
            report.corrupt.append(f"{where}: {record_id}")
        if record_id in located:
            report.duplicated.append(record_id)
            continue
        located[record_id] = (shard_id, seen.sequence_number)
        ack = history.acked.get(record_id)
        if ack is None:
            report.indeterminate_found += 1
        elif ack != (shard_id, seen.sequence_number):
            report.moved.append(f"{record_id}: acked at {ack}, found at {where}")
        key, counter = record_id
        previous = last_counter.get(key)
        if previous is not None and counter <= previous:
            report.reordered.append(f"{where}: key {key!r} counter {counter} after {previous}")
        last_counter[key] = counter


def _check_observed(history: History, found: Mapping[str, list[Seen]], report: CheckReport) -> None:
    """What tailing readers saw must still be there, identical (never retracted or changed)."""
    final = {
        (seen.shard_id, seen.sequence_number): seen
        for records in found.values()
        for seen in records
    }
    for shard_id, seen_list in history.observed.items():
        for seen in seen_list:
            now = final.get((shard_id, seen.sequence_number))
            if now is None or now.data != seen.data or now.partition_key != seen.partition_key:
                report.retracted.append(f"{shard_id}@{seen.sequence_number}")
