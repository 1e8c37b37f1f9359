"""Reusable test machinery for streamd: real server processes and a history checker.

Shipped with the package (as ``trio.testing`` is) so that tests, ``scenarios/`` and
``streamd bench`` share one way to start, crash and restart a server, and so that users can run
the same fault scenarios against their own builds.
"""

from __future__ import annotations

from .history import CheckReport, History, Seen, check, make_data, parse_identity
from .process import ServerProcess, ServerStartError, process_cpu_seconds

__all__ = [
    "CheckReport",
    "History",
    "Seen",
    "ServerProcess",
    "ServerStartError",
    "check",
    "make_data",
    "parse_identity",
    "process_cpu_seconds",
]
