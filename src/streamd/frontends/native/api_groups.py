"""Native-protocol operations of consumer groups (docs/consumer-groups.md), merged into
the server's table by ``api.bind_handlers``.

Same contract as api.py: check argument types and limits, call the node's group service (the
composition root, streamd/node.py, builds it and api.bind_handlers hands it to these handlers),
return the result map that goes on the wire, raise StreamdError subclasses only.

Cluster mode: any node serves every group operation. Each handler is wrapped (``_routed``): it
asks the service where the group's coordinator runs and, when that is another node, forwards
the request unchanged there (marked ``forwarded: true``, never forwarded twice) and answers
what it answered. ``group_list`` spans groups, so it asks each group's coordinator in turn.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from streamd_client.errors import InvalidArgumentError
from streamd_client.group_errors import GROUP_ERRORS
from streamd_client.model import Position, check_stream_name
from streamd_client.summary import summary

from ...groups.service import GroupService
from ...groups.state import (
    MEMBERS_MAX,
    REBALANCE_TIMEOUT_MS_DEFAULT,
    SESSION_TIMEOUT_MS_DEFAULT,
    SHARD_END,
)

GroupHandler = Callable[[GroupService, dict[str, Any]], Awaitable[dict[str, Any]]]
INT_ARG_MIN = -(2**63)  # as api.py: integer arguments are 64-bit
INT_ARG_MAX = 2**64 - 1

assert GROUP_ERRORS  # importing group_errors registers the codes for error_from_wire

GROUP_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
OWNED_MAX = 4 * MEMBERS_MAX
_INITIAL_KINDS = ("trim_horizon", "latest", "at_timestamp")


def _arg(args: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = args.get(name, default)
    if value is ...:
        raise InvalidArgumentError(f"missing argument {name!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgumentError(f"argument {name!r} must be {kind.__name__}")
    if isinstance(value, int) and not INT_ARG_MIN <= value <= INT_ARG_MAX:  # a bignum
        raise InvalidArgumentError(f"argument {name!r} is out of range: {summary(value)}")
    return value


def _names(args: dict[str, Any]) -> tuple[str, str]:
    stream = check_stream_name(args.get("stream"))
    group = args.get("group")
    if not isinstance(group, str) or not GROUP_NAME_RE.fullmatch(group):
        raise InvalidArgumentError(
            f"group name must match [a-zA-Z0-9_.-]{{1,128}}, got {summary(group, 140)}"
        )
    return stream, group


def _initial(raw: Any) -> dict[str, Any]:
    position = Position.from_wire(raw)
    if position.kind not in _INITIAL_KINDS:
        raise InvalidArgumentError(
            f"a group starts at {'|'.join(_INITIAL_KINDS)}, not {position.kind}"
        )
    return position.to_wire()


def _owned(args: dict[str, Any]) -> list[tuple[str, int]]:
    raw = _arg(args, "owned", list, [])
    if len(raw) > OWNED_MAX:
        raise InvalidArgumentError(f"owned lists at most {OWNED_MAX} leases")
    owned: list[tuple[str, int]] = []
    for item in raw:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or not 0 <= item[1] <= INT_ARG_MAX
        ):
            raise InvalidArgumentError("owned entries must be [shard_id, epoch]")
        owned.append((item[0], item[1]))
    return owned


def _member(args: dict[str, Any]) -> str:
    member_id: str = _arg(args, "member_id", str)
    if not 1 <= len(member_id) <= 128:
        raise InvalidArgumentError("member_id must be 1..128 characters")
    return member_id


async def _join(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    member_id = _member(args)
    client = _arg(args, "client", str, "")
    session_ms = _arg(args, "session_timeout_ms", int, SESSION_TIMEOUT_MS_DEFAULT)
    rebalance_ms = _arg(args, "rebalance_timeout_ms", int, REBALANCE_TIMEOUT_MS_DEFAULT)
    initial = _initial(args.get("from", {"type": "trim_horizon"}))
    owned = _owned(args)
    answer = await groups.step(
        stream,
        group,
        lambda c, now: c.join(
            member_id,
            now,
            client=client,
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=rebalance_ms,
            owned=owned,
        ),
        create_from=initial,
    )
    return answer.to_wire()


async def _heartbeat(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    member_id = _member(args)
    owned = _owned(args)
    answer = await groups.step(stream, group, lambda c, now: c.heartbeat(member_id, now, owned))
    return answer.to_wire()


async def _leave(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    member_id = _member(args)
    await groups.step(stream, group, lambda c, now: c.leave(member_id, now))
    return {}


async def _checkpoint(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    member_id = _member(args)
    shard_id = _arg(args, "shard_id", str)
    epoch = _arg(args, "epoch", int)
    sequence = _arg(args, "sequence", str)
    metadata = _arg(args, "metadata", str, None) if args.get("metadata") is not None else None
    sub = _arg(args, "sub_sequence", int, None) if args.get("sub_sequence") is not None else None
    stored = await groups.step(
        stream,
        group,
        lambda c, now: c.checkpoint(member_id, shard_id, epoch, sequence, now, metadata, sub),
    )
    answer = {
        "shard_id": shard_id,
        "sequence": stored.sequence,
        "epoch": stored.epoch,
        "shard_end": stored.sequence == SHARD_END,
    }
    if stored.sub_sequence is not None:
        answer["sub_sequence"] = stored.sub_sequence
    return answer


async def _create(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    initial = _initial(args.get("from", {"type": "trim_horizon"}))
    view = await groups.step(stream, group, lambda c, now: c.describe(now), create_from=initial)
    return {"initial": view["initial"], "created_ms": view["created_ms"]}


async def _describe(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    return {"group": await groups.describe(stream, group)}


async def _list(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream = check_stream_name(args.get("stream"))
    if groups.cluster is None:
        return {"groups": await groups.list_groups(stream)}

    async def describe(group: str) -> dict[str, Any]:
        answer = await _routed("group_describe", _describe)(
            groups, {"stream": stream, "group": group}
        )
        view: dict[str, Any] = answer["group"]
        return view

    return {"groups": await groups.list_groups(stream, describe)}


async def _reset(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    to = _initial(_arg(args, "to", dict))
    await groups.reset(stream, group, to, _arg(args, "force", bool, False))
    return {}


async def _delete(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
    stream, group = _names(args)
    await groups.delete(stream, group, _arg(args, "force", bool, False))
    return {}


_CREATING = frozenset({"group_join", "group_create"})  # the ops that may create the group


def _routed(op: str, handler: GroupHandler) -> GroupHandler:
    """``handler`` where the group's coordinator runs: here, or forwarded to its node."""

    async def routed(groups: GroupService, args: dict[str, Any]) -> dict[str, Any]:
        stream, group = _names(args)
        forwarded = _arg(args, "forwarded", bool, False)
        address = await groups.route(stream, group, create=op in _CREATING, forwarded=forwarded)
        if address is None:
            return await handler(groups, args)
        assert groups.cluster is not None
        return await groups.cluster.forward(address, op, args)

    return routed


GROUP_HANDLERS: dict[str, GroupHandler] = {
    "group_join": _routed("group_join", _join),
    "group_heartbeat": _routed("group_heartbeat", _heartbeat),
    "group_leave": _routed("group_leave", _leave),
    "group_checkpoint": _routed("group_checkpoint", _checkpoint),
    "group_create": _routed("group_create", _create),
    "group_describe": _routed("group_describe", _describe),
    "group_list": _list,
    "group_reset": _routed("group_reset", _reset),
    "group_delete": _routed("group_delete", _delete),
}
