"""Request member checks with Kinesis's error shapes.

Kinesis reports a member of the wrong type or out of its modelled range as ValidationException
("1 validation error detected: Value ... at 'shardCount' failed to satisfy constraint: ..."),
and a semantic problem (a well-formed value that makes no sense here) as
InvalidArgumentException. These helpers raise the former; operations raise the latter.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from streamd_client.summary import summary

from .codec import OversizedNumber
from .errors import validation


def _field(name: str) -> str:
    return name[:1].lower() + name[1:]


def _fail(name: str, value: Any, constraint: str) -> Exception:
    return validation(
        f"1 validation error detected: Value {summary(value, 120)} at '{_field(name)}' failed to "
        f"satisfy constraint: {constraint}"
    )


def opt_str(
    body: dict[str, Any], name: str, *, min_len: int = 1, max_len: int = 1 << 20
) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(name, value, "Member must be a string")
    if not min_len <= len(value) <= max_len:
        raise _fail(
            name, value, f"Member must have length between {min_len} and {max_len}, inclusive"
        )
    return value


def req_str(body: dict[str, Any], name: str, *, min_len: int = 1, max_len: int = 1 << 20) -> str:
    value = opt_str(body, name, min_len=min_len, max_len=max_len)
    if value is None:
        raise _fail(name, None, "Member must not be null")
    return value


def opt_int(body: dict[str, Any], name: str, *, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, OversizedNumber):  # more digits than int() takes: out of range
        if value.negative:
            raise _fail(name, str(value), f"Member must have value greater than or equal to {low}")
        raise _fail(name, str(value), f"Member must have value less than or equal to {high}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, value, "Member must be an integer")
    if value < low:
        raise _fail(name, value, f"Member must have value greater than or equal to {low}")
    if value > high:
        raise _fail(name, value, f"Member must have value less than or equal to {high}")
    return value


def req_int(body: dict[str, Any], name: str, *, low: int, high: int) -> int:
    value = opt_int(body, name, low=low, high=high)
    if value is None:
        raise _fail(name, None, "Member must not be null")
    return value


def opt_enum(body: dict[str, Any], name: str, allowed: Collection[str]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise _fail(name, value, f"Member must satisfy enum value set: [{', '.join(allowed)}]")
    return value


def opt_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _fail(name, value, "Member must be a boolean")


def opt_map(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(name, value, "Member must be a structure")
    return value


def opt_list(body: dict[str, Any], name: str, *, max_len: int) -> list[Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail(name, value, "Member must be a list")
    if len(value) > max_len:
        raise _fail(name, len(value), f"Member must have length less than or equal to {max_len}")
    return value


def str_map(body: dict[str, Any], name: str) -> dict[str, str] | None:
    """A map of strings to strings (tags)."""
    value = opt_map(body, name)
    if value is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _fail(name, "...", "Member must be a map of strings to strings")
    return value


def str_list(body: dict[str, Any], name: str, *, max_len: int) -> list[str] | None:
    value = opt_list(body, name, max_len=max_len)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise _fail(name, "...", "Member must be a list of strings")
    return value
