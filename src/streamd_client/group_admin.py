"""Consumer-group wire calls and answer parsing (docs/consumer-groups.md), on a ``Client``.

The worker (group.py) uses ``join``/``heartbeat``/``leave``/``checkpoint``; the CLI and users use
the admin calls. Answers are untrusted input: each parser checks the shape and raises
``ProtocolError`` only (as results.py does for the stream calls).
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

from . import group_errors as _group_errors  # registers the group error codes
from .client_api import Caller
from .errors import InvalidArgumentError, ProtocolError
from .model import SUB_SEQUENCE_MAX, Position, check_stream_name
from .results import field
from .summary import summary

assert _group_errors.GROUP_ERRORS

SHARD_END: Final = "SHARD_END"
GROUP_NAME_RE: Final = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
INITIAL_KINDS: Final = ("trim_horizon", "latest", "at_timestamp")

OP_GROUP_JOIN: Final = "group_join"
OP_GROUP_HEARTBEAT: Final = "group_heartbeat"
OP_GROUP_LEAVE: Final = "group_leave"
OP_GROUP_CHECKPOINT: Final = "group_checkpoint"
OP_GROUP_CREATE: Final = "group_create"
OP_GROUP_DESCRIBE: Final = "group_describe"
OP_GROUP_LIST: Final = "group_list"
OP_GROUP_RESET: Final = "group_reset"
OP_GROUP_DELETE: Final = "group_delete"


class LeaseGrant(NamedTuple):
    """A lease as the coordinator hands it out: process ``shard_id`` under ``epoch``."""

    shard_id: str
    epoch: int
    start: Position  # where the group's last checkpoint leaves off
    closed: bool  # the shard was closed by resharding: it ends
    # The last checkpoint is inside the KPL aggregate at ``start`` (an at_sequence position):
    # its user records up to and including this index are processed.
    after_sub_sequence: int | None = None


class Assignment(NamedTuple):
    """The answer to join and heartbeat: leases to keep, leases to give up, timing."""

    member_id: str
    assignment: list[LeaseGrant]
    revoking: list[LeaseGrant]
    heartbeat_interval_ms: int
    session_timeout_ms: int


def check_group_name(name: object) -> str:
    if not isinstance(name, str) or not GROUP_NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"group name must match [a-zA-Z0-9_.-]{{1,128}}, got {summary(name, 140)}"
        )
    return name


def check_initial(position: Position) -> Position:
    if position.kind not in INITIAL_KINDS:
        raise InvalidArgumentError(
            f"a group starts at {'|'.join(INITIAL_KINDS)}, not {position.kind}"
        )
    return position


def _grant(body: Any) -> LeaseGrant:
    epoch = field(body, "epoch", int)
    if epoch < 1:
        raise ProtocolError(f"lease epoch must be positive, got {epoch}")
    try:
        start = Position.from_wire(field(body, "start", dict))
    except InvalidArgumentError as exc:
        raise ProtocolError(f"malformed lease start: {exc.message}") from None
    sub = body.get("after_sub_sequence")
    if sub is not None and (type(sub) is not int or not 0 <= sub <= SUB_SEQUENCE_MAX):
        raise ProtocolError(f"malformed after_sub_sequence {summary(sub)}")
    if sub is not None and start.kind != "at_sequence":
        raise ProtocolError(f"after_sub_sequence with a {start.kind} start")
    return LeaseGrant(field(body, "shard_id", str), epoch, start, field(body, "closed", bool), sub)


def assignment_from_wire(body: Any) -> Assignment:
    interval_ms = field(body, "heartbeat_interval_ms", int)
    session_ms = field(body, "session_timeout_ms", int)
    if not 1 <= interval_ms <= session_ms:
        raise ProtocolError(f"heartbeat interval {interval_ms} ms vs session {session_ms} ms")
    return Assignment(
        field(body, "member_id", str),
        [_grant(g) for g in field(body, "assignment", list)],
        [_grant(g) for g in field(body, "revoking", list)],
        interval_ms,
        session_ms,
    )


def _names(stream: str, group: str) -> dict[str, Any]:
    return {"stream": check_stream_name(stream), "group": check_group_name(group)}


# -- the worker's calls -------------------------------------------------------------------------


async def join(
    client: Caller,
    stream: str,
    group: str,
    member_id: str,
    *,
    client_info: str,
    initial: Position,
    session_timeout_ms: int,
    rebalance_timeout_ms: int,
    timeout_s: float | None = None,
) -> Assignment:
    """Join (creating the group at ``initial`` if it is new). Raises StreamNotFoundError,
    InvalidArgumentError, LimitExceededError, and transport errors."""
    args = {
        **_names(stream, group),
        "member_id": member_id,
        "client": client_info,
        "from": check_initial(initial).to_wire(),
        "session_timeout_ms": session_timeout_ms,
        "rebalance_timeout_ms": rebalance_timeout_ms,
    }
    return assignment_from_wire(await client.call(OP_GROUP_JOIN, args, timeout_s=timeout_s))


async def heartbeat(
    client: Caller,
    stream: str,
    group: str,
    member_id: str,
    owned: list[tuple[str, int]],
    *,
    timeout_s: float | None = None,
) -> Assignment:
    """Report the leases held; get the target. Raises UnknownMemberError (join again)."""
    args = {**_names(stream, group), "member_id": member_id, "owned": [list(o) for o in owned]}
    return assignment_from_wire(await client.call(OP_GROUP_HEARTBEAT, args, timeout_s=timeout_s))


async def leave(
    client: Caller, stream: str, group: str, member_id: str, *, timeout_s: float | None = None
) -> None:
    """Leave the group: every lease of the member is freed at once."""
    await client.call(
        OP_GROUP_LEAVE, {**_names(stream, group), "member_id": member_id}, timeout_s=timeout_s
    )


async def checkpoint(
    client: Caller,
    stream: str,
    group: str,
    member_id: str,
    shard_id: str,
    epoch: int,
    sequence: str,
    metadata: str | None = None,
    *,
    sub_sequence: int | None = None,
    timeout_s: float | None = None,
) -> None:
    """Store progress (a sequence number, or SHARD_END; ``sub_sequence``: only up to that user
    record of the KPL aggregate at ``sequence``). Raises LeaseLostError (fenced: not the
    lease's holder at that epoch), InvalidCheckpointError, ShardNotFoundError."""
    args: dict[str, Any] = {
        **_names(stream, group),
        "member_id": member_id,
        "shard_id": shard_id,
        "epoch": epoch,
        "sequence": sequence,
    }
    if metadata is not None:
        args["metadata"] = metadata
    if sub_sequence is not None:
        args["sub_sequence"] = sub_sequence
    await client.call(OP_GROUP_CHECKPOINT, args, timeout_s=timeout_s)


# -- admin calls ----------------------------------------------------------------------------------


async def create_group(
    client: Caller, stream: str, group: str, initial: Position | None = None
) -> dict[str, Any]:
    """Create the group if it does not exist (idempotent). Raises StreamNotFoundError."""
    args = {
        **_names(stream, group),
        "from": check_initial(initial or Position.trim_horizon()).to_wire(),
    }
    return await client.call(OP_GROUP_CREATE, args)


async def describe_group(client: Caller, stream: str, group: str) -> dict[str, Any]:
    """Members, leases (owner, epoch), checkpoints and lag per shard (docs/consumer-groups.md).

    Raises GroupNotFoundError, StreamNotFoundError.
    """
    answer = await client.call(OP_GROUP_DESCRIBE, _names(stream, group))
    view = field(answer, "group", dict)
    field(view, "members", list)
    field(view, "shards", list)
    return view


async def list_groups(client: Caller, stream: str) -> list[dict[str, Any]]:
    """A summary per group of the stream. Raises StreamNotFoundError."""
    answer = await client.call(OP_GROUP_LIST, {"stream": check_stream_name(stream)})
    groups = field(answer, "groups", list)
    return [g for g in groups if isinstance(g, dict)]


async def reset_group(
    client: Caller, stream: str, group: str, to: Position, *, force: bool = False
) -> None:
    """Forget every checkpoint and start again from ``to`` (trim_horizon, latest, at_timestamp).

    Raises GroupActiveError (members present and not ``force``), GroupNotFoundError.
    """
    args = {**_names(stream, group), "to": check_initial(to).to_wire(), "force": force}
    await client.call(OP_GROUP_RESET, args)


async def delete_group(client: Caller, stream: str, group: str, *, force: bool = False) -> None:
    """Remove the group and its checkpoints. Raises GroupActiveError, GroupNotFoundError."""
    await client.call(OP_GROUP_DELETE, {**_names(stream, group), "force": force})
