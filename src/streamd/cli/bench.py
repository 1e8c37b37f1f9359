"""``streamd bench produce|consume|kinesis``: the benchmarks (streamd/bench/) on the command line.

The benchmarks' own options live with them (bench/native.py, bench/kinesis.py); their
``--endpoint`` defaults to starting a server of their own, not to $STREAMD_ENDPOINT.
"""

from __future__ import annotations

from typing import Any

from .common import add_endpoint


def register(commands: Any) -> None:
    """Add ``streamd bench ...``."""
    from ..bench import native

    native.add_parser(commands, add_endpoint)
