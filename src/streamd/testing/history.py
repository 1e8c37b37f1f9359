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
| offset_conflict | one (shard, sequence) names two records across acks, reads and the log  |
| skipped         | a reader went from one record to a later one past a record of the log   |
| went_back       | a reader was handed a sequence not after the one it had before          |
| divergent       | two replicas' committed prefixes differ (replica_check.compare_replicas)|
| under_replicated| fewer than a majority of a shard's replicas hold its committed prefix    |
| damaged         | a replica's committed prefix holds a batch failing its CRC              |
| not_resumed     | writes were sent after a fault, but none on an affected shard was acked |
| scenario        | a scenario's own check failed (``History.scenario_violations``)        |
| read_refused    | a read of committed records was refused: by the client as malformed,   |
|                 | or by the server with a non-retryable error (``record_refused_read``)  |

Two delivery guarantees: records written through the idempotent producer are checked *exactly
once* (a second copy is ``duplicated``); records written with plain ``put_records`` and retried
by the writer after a failure (``record_sent(..., at_least_once=True)``) are checked *at least
once*: copies are counted (``duplicates_allowed``), their acknowledgement must name one of them,
and per-key order is not checked for them (a retry lands after later records).

Readers are named (``record_observed(seen, reader=NAME)``); each reader's records of a shard
must follow the final log with no gap (``skipped``) and never go back. A reader registered with
``record_reader_start(NAME, shard, from_start=True)`` must also begin at the log's first record.

Faults are recorded with the time they struck and the shards they affect
(``record_fault``); ``sent_at``/``acked_at`` (monotonic seconds) then give, per fault and shard,
the time to the first acknowledgement of a write sent after the fault: ``report.resumes``, and
``resume_summary()`` prints their distribution.

Records whose write failed or never completed are allowed either way (present once, whole, and
in order, or absent): they are counted as "indeterminate found/missing", not as violations.

Record data produced by ``make_data`` embeds the key and counter, so a record identifies itself
even when its partition key or sequence came back wrong.
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from streamd_client.model import parse_sequence

from .replica_check import ReplicaSnapshot, compare_replicas

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


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault the scenario struck at ``at_s`` (monotonic seconds), and the shards it hits."""

    name: str
    at_s: float
    shards: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resume:
    """Writes on ``shard`` resumed ``resume_s`` after ``fault`` (None: never)."""

    fault: Fault
    shard_id: str
    resume_s: float | None


@dataclass
class History:
    """What the producers did. Not thread-safe; one event loop writes it."""

    sent: dict[RecordId, bytes] = field(default_factory=dict)
    acked: dict[RecordId, tuple[str, str]] = field(default_factory=dict)  # -> (shard, sequence)
    failed: dict[RecordId, str] = field(default_factory=dict)  # -> error code
    observed: dict[str, list[Seen]] = field(default_factory=dict)  # tailing reads, per shard
    observed_by: dict[tuple[str, str], list[Seen]] = field(default_factory=dict)  # (reader, shard)
    readers_from_start: set[tuple[str, str]] = field(default_factory=set)
    at_least_once: set[RecordId] = field(default_factory=set)  # plain puts, retried by the writer
    sent_at: dict[RecordId, float] = field(default_factory=dict)  # first send, monotonic s
    acked_at: dict[RecordId, float] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    refused_reads: list[str] = field(default_factory=list)  # reads the client refused
    scenario_violations: list[str] = field(default_factory=list)

    def record_sent(
        self,
        key: str,
        counter: int,
        data: bytes,
        *,
        at_s: float | None = None,
        at_least_once: bool = False,
    ) -> None:
        record_id = (key, counter)
        self.sent[record_id] = data
        if at_s is not None:
            self.sent_at.setdefault(record_id, at_s)
        if at_least_once:
            self.at_least_once.add(record_id)

    def record_ack(
        self, key: str, counter: int, shard_id: str, sequence: str, *, at_s: float | None = None
    ) -> None:
        record_id = (key, counter)
        self.acked[record_id] = (shard_id, sequence)
        self.failed.pop(record_id, None)  # a retry of a failed plain put got through
        if at_s is not None:
            self.acked_at[record_id] = at_s

    def record_failure(self, key: str, counter: int, code: str) -> None:
        if (key, counter) not in self.acked:
            self.failed[(key, counter)] = code

    def record_reader_start(self, reader: str, shard_id: str, *, from_start: bool) -> None:
        if from_start:
            self.readers_from_start.add((reader, shard_id))

    def record_observed(self, seen: Seen, *, reader: str = "reader") -> None:
        self.observed.setdefault(seen.shard_id, []).append(seen)
        self.observed_by.setdefault((reader, seen.shard_id), []).append(seen)

    def record_refused_read(self, reader: str, shard_id: str, detail: str) -> None:
        """A read of committed records refused: by the client (a malformed page) or by the
        server (a non-retryable error). Kept once per distinct refusal, at most 1,000."""
        entry = f"{reader} on {shard_id} {detail}"
        if len(self.refused_reads) < 1_000 and entry not in self.refused_reads[-20:]:
            self.refused_reads.append(entry)

    def record_fault(self, name: str, at_s: float, shards: Iterable[str]) -> None:
        self.faults.append(Fault(name, at_s, tuple(sorted(shards))))


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
    duplicates_allowed: int = 0
    replica_batches_compared: int = 0
    lost: list[RecordId] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicated: list[RecordId] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)
    non_monotonic: list[str] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)
    offset_conflict: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    went_back: list[str] = field(default_factory=list)
    divergent: list[str] = field(default_factory=list)
    under_replicated: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    not_resumed: list[str] = field(default_factory=list)
    read_refused: list[str] = field(default_factory=list)
    scenario: list[str] = field(default_factory=list)  # what a scenario checked itself
    resumes: list[Resume] = field(default_factory=list)

    VIOLATIONS = (
        "lost",
        "moved",
        "corrupt",
        "unknown",
        "duplicated",
        "reordered",
        "non_monotonic",
        "retracted",
        "offset_conflict",
        "skipped",
        "went_back",
        "divergent",
        "under_replicated",
        "damaged",
        "not_resumed",
        "read_refused",
        "scenario",
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
            "duplicates_allowed": self.duplicates_allowed,
            "replica_batches_compared": self.replica_batches_compared,
        }
        for name in self.VIOLATIONS:
            items = getattr(self, name)
            counts[name] = len(items)
            if items:
                counts[f"{name}_examples"] = [str(item) for item in items[:examples_max]]
        counts["resumes"] = [
            {
                "fault": r.fault.name,
                "shard": r.shard_id,
                "resume_s": None if r.resume_s is None else round(r.resume_s, 3),
            }
            for r in self.resumes
        ]
        return counts

    def summary(self) -> str:
        verdict = "OK" if self.ok else "VIOLATIONS"
        lines = [
            f"{verdict}: sent {self.sent}, acknowledged {self.acked}, failed {self.failed}, "
            f"found {self.found} (indeterminate: {self.indeterminate_found} found, "
            f"{self.indeterminate_missing} missing; at-least-once copies "
            f"{self.duplicates_allowed}), tailing readers saw {self.observed}, replica batches "
            f"compared {self.replica_batches_compared}"
        ]
        for name in self.VIOLATIONS:
            items = getattr(self, name)
            if items:
                lines.append(f"  {name}: {len(items)}, e.g. {items[:5]}")
        return "\n".join(lines)

    def resume_times_s(self) -> list[float]:
        """Per fault, the slowest of its shards to resume (faults where all resumed)."""
        worst: dict[int, float] = {}
        failed: set[int] = set()
        for r in self.resumes:
            key = id(r.fault)
            if r.resume_s is None:
                failed.add(key)
            else:
                worst[key] = max(worst.get(key, 0.0), r.resume_s)
        return [value for key, value in worst.items() if key not in failed]

    def resume_summary(self) -> str:
        """One line per fault (slowest shard), then the distribution over faults."""
        per_fault: dict[int, list[Resume]] = {}
        for r in self.resumes:
            per_fault.setdefault(id(r.fault), []).append(r)
        lines = []
        for resumes in per_fault.values():
            fault = resumes[0].fault
            times = [r.resume_s for r in resumes if r.resume_s is not None]
            never = [r.shard_id for r in resumes if r.resume_s is None]
            slowest = f"{max(times):.3f} s" if times else "-"
            lines.append(
                f"  {fault.name}: {len(resumes)} shards, writes resumed after {slowest}"
                + (f"; never on {never}" if never else "")
            )
        times = sorted(self.resume_times_s())
        if times:
            lines.append(
                f"  time to resume over {len(times)} faults: min {times[0]:.3f} s, median "
                f"{statistics.median(times):.3f} s, p90 {_quantile(times, 0.9):.3f} s, max "
                f"{times[-1]:.3f} s"
            )
        return "\n".join(lines) if lines else "  no faults recorded"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check(
    history: History,
    found: Mapping[str, Iterable[Seen]],
    *,
    replicas: Mapping[str, Sequence[ReplicaSnapshot]] | None = None,
    replica_count: int | None = None,
) -> CheckReport:
    """Compare the history with a final read of every shard (``found``: shard id -> records in
    log order) and, when given, with each shard's replica logs (``replicas``: shard id -> one
    snapshot per node holding a replica; ``replica_count`` the replication factor). Pure."""
    report = CheckReport(
        sent=len(history.sent),
        acked=len(history.acked),
        failed=len(history.failed),
        observed=sum(len(v) for v in history.observed.values()),
    )
    found_lists = {shard_id: list(records) for shard_id, records in found.items()}
    located: dict[RecordId, list[tuple[str, str]]] = {}
    for shard_id, records in found_lists.items():
        _check_shard(history, shard_id, records, report, located)
    _check_fates(history, located, report)
    _check_observed(history, found_lists, report)
    _check_offsets(history, found_lists, report)
    _check_readers(history, found_lists, report)
    if replicas is not None:
        _check_replicas(found_lists, replicas, replica_count, report)
    _check_resumes(history, report)
    report.read_refused = list(history.refused_reads)
    report.scenario = list(history.scenario_violations)
    return report


def _check_shard(
    history: History,
    shard_id: str,
    records: list[Seen],
    report: CheckReport,
    located: dict[RecordId, list[tuple[str, str]]],
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
        copies = located.setdefault(record_id, [])
        copies.append((shard_id, seen.sequence_number))
        if len(copies) > 1:
            if record_id in history.at_least_once:
                report.duplicates_allowed += 1
            else:
                report.duplicated.append(record_id)
            continue
        if record_id in history.at_least_once:
            continue  # a retry may land after later records of its key
        key, counter = record_id
        previous = last_counter.get(key)
        if previous is not None and counter <= previous:
            report.reordered.append(f"{where}: key {key!r} counter {counter} after {previous}")
        last_counter[key] = counter


def _check_fates(
    history: History, located: dict[RecordId, list[tuple[str, str]]], report: CheckReport
) -> None:
    """Every acked record where its ack says (one of its copies, for at-least-once records)."""
    for record_id in history.sent:
        copies = located.get(record_id)
        ack = history.acked.get(record_id)
        if not copies:
            if ack is not None:
                report.lost.append(record_id)
            else:
                report.indeterminate_missing += 1
        elif ack is None:
            report.indeterminate_found += 1
        elif ack not in copies:
            shard_id, sequence = copies[0]
            report.moved.append(f"{record_id}: acked at {ack}, found at {shard_id}@{sequence}")


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


def _check_offsets(history: History, found: Mapping[str, list[Seen]], report: CheckReport) -> None:
    """One (shard, sequence) names one record, whoever reported it: an ack, a reader, the log."""
    named: dict[tuple[str, str], tuple[RecordId | None, str]] = {}

    def claim(place: tuple[str, str], record_id: RecordId | None, source: str) -> None:
        earlier = named.setdefault(place, (record_id, source))
        if earlier[0] != record_id:
            report.offset_conflict.append(
                f"{place[0]}@{place[1]}: {earlier[0]} ({earlier[1]}) and {record_id} ({source})"
            )

    for shard_id, records in found.items():
        for seen in records:
            claim((shard_id, seen.sequence_number), parse_identity(seen.data), "final read")
    for record_id, place in history.acked.items():
        claim(place, record_id, "ack")
    for (reader, shard_id), seen_list in history.observed_by.items():
        for seen in seen_list:
            claim((shard_id, seen.sequence_number), parse_identity(seen.data), reader)


def _check_readers(history: History, found: Mapping[str, list[Seen]], report: CheckReport) -> None:
    """Each reader follows the final log record by record: no gap, never backwards."""
    offsets = {
        shard_id: [parse_sequence(seen.sequence_number)[1] for seen in records]
        for shard_id, records in found.items()
    }
    for (reader, shard_id), seen_list in history.observed_by.items():
        log = offsets.get(shard_id, [])
        previous: int | None = None
        if (reader, shard_id) in history.readers_from_start and log:
            previous = log[0] - 1  # its first record must be the log's first
        for seen in seen_list:
            offset = parse_sequence(seen.sequence_number)[1]
            if previous is not None and offset <= previous:
                report.went_back.append(f"{reader} on {shard_id}: {offset} after {previous}")
            elif previous is not None:
                between = bisect.bisect_left(log, offset) - bisect.bisect_right(log, previous)
                if between > 0:
                    report.skipped.append(
                        f"{reader} on {shard_id}: {between} records between {previous} and {offset}"
                    )
            previous = offset if previous is None else max(previous, offset)


def _check_replicas(
    found: Mapping[str, list[Seen]],
    replicas: Mapping[str, Sequence[ReplicaSnapshot]],
    replica_count: int | None,
    report: CheckReport,
) -> None:
    """The committed prefix (everything the final read returned) is the same on every replica."""
    for shard_id, snapshots in replicas.items():
        records = found.get(shard_id, [])
        committed_end = parse_sequence(records[-1].sequence_number)[1] + 1 if records else 0
        findings = compare_replicas(shard_id, snapshots, committed_end, replica_count=replica_count)
        report.divergent += findings.divergent
        report.under_replicated += findings.under_replicated
        report.damaged += findings.damaged
        report.replica_batches_compared += findings.compared_batches


def _check_resumes(history: History, report: CheckReport) -> None:
    """Per fault and affected shard: the first ack of a write sent after the fault."""
    by_shard: dict[str, list[tuple[float, float]]] = {}
    for record_id, (shard_id, _sequence) in history.acked.items():
        sent_at, acked_at = history.sent_at.get(record_id), history.acked_at.get(record_id)
        if sent_at is not None and acked_at is not None:
            by_shard.setdefault(shard_id, []).append((sent_at, acked_at))
    earliest_after: dict[str, tuple[list[float], list[float]]] = {}
    for shard_id, pairs in by_shard.items():
        pairs.sort()
        suffix_min = [0.0] * len(pairs)
        best = float("inf")
        for i in range(len(pairs) - 1, -1, -1):
            best = min(best, pairs[i][1])
            suffix_min[i] = best
        earliest_after[shard_id] = ([p[0] for p in pairs], suffix_min)
    last_send_s = max(history.sent_at.values(), default=float("-inf"))
    for fault in history.faults:
        for shard_id in fault.shards:
            sends, suffix_min = earliest_after.get(shard_id, ([], []))
            i = bisect.bisect_left(sends, fault.at_s)
            if i < len(sends):
                report.resumes.append(Resume(fault, shard_id, suffix_min[i] - fault.at_s))
            else:
                report.resumes.append(Resume(fault, shard_id, None))
                if last_send_s >= fault.at_s:  # writes were offered after it, none got through
                    report.not_resumed.append(f"{fault.name}: {shard_id}")
