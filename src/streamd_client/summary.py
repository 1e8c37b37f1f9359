"""Bounded descriptions of untrusted values, for error messages and log lines.

A value decoded from a peer may be huge (an 8 MiB string), deep, shared (a DAG whose ``repr`` is
exponential), or an integer too long for ``str`` (more than 4,300 digits raises ValueError).
``f"{value!r:.60}"`` does not help: the whole ``repr`` is built before it is cut. So every
message that names a peer's value goes through ``summary``.
"""

from __future__ import annotations

from typing import Any

INT_BITS_SHOWN_MAX = 128


def summary(value: Any, chars_max: int = 60) -> str:
    """A short description of ``value`` for an error message or a log line.

    Never a full ``repr`` (a decoded value may be huge, deep, or an integer too long for
    ``str``): text and bytes are cut to ``chars_max``, containers are described by their size.
    """
    if isinstance(value, str):
        if len(value) <= chars_max:
            return repr(value)
        return f"{value[:chars_max]!r}... ({len(value)} characters)"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() <= INT_BITS_SHOWN_MAX:
            return str(value)
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    return f"a {type(value).__name__}"
