"""Enhanced fan-out: stream consumers and SubscribeToShard (work in progress).

``FANOUT_OPERATIONS`` maps Kinesis operation names to their implementations; the gateway's
operation registry imports it.
"""

from __future__ import annotations

from .types import Operation

FANOUT_OPERATIONS: dict[str, Operation] = {}
