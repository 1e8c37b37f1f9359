"""The per-shard storage engine: segment files, sparse index, recovery, retention.

Blocking file I/O only (the server calls it from worker threads); no trio or anyio here.
``ShardLog`` is the API; the file format and the recovery decision table are in
docs/storage-format.md.
"""

from __future__ import annotations

from .config import LogConfig, RecoveryReport
from .errors import OffsetTrimmedError, SyncFailedError
from .fdcache import FdCache
from .log import ShardLog

__all__ = [
    "FdCache",
    "LogConfig",
    "OffsetTrimmedError",
    "RecoveryReport",
    "ShardLog",
    "SyncFailedError",
]
