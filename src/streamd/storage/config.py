"""The storage engine's knobs (units last) and what recovery reports back.

Kept apart from ``log.py`` so that recovery and segments can import them without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LogConfig:
    segment_bytes_max: int = 64 * 1024 * 1024  # roll before a batch would take a segment past it
    segment_age_ms_max: int = 60 * 60 * 1000  # roll when the active segment's first batch is older
    index_interval_bytes: int = 4096  # sparse index: one entry per this many bytes of batches
    fsync: bool = True  # False: sync() is a no-op and nothing else fsyncs (fsync=never mode)
    producers_max: int = 10_000  # idempotent producers remembered; least recently appended go

    def __post_init__(self) -> None:
        assert self.segment_bytes_max > 0
        assert self.segment_age_ms_max > 0
        assert self.index_interval_bytes > 0
        assert self.producers_max > 0


@dataclass
class RecoveryReport:
    segments: int = 0
    batches: int = 0
    truncated_bytes: int = 0
    corrupt_ranges: list[tuple[int, int]] = field(default_factory=list)  # [base, next) offsets
    clean: bool = False  # whether the previous shutdown was clean
