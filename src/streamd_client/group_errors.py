"""Typed errors of consumer groups, with stable wire codes (docs/consumer-groups.md).

``errors.ERRORS_BY_CODE`` is built when ``errors`` is imported, before these classes exist, so
this module adds them to it explicitly: importing it (``streamd_client.group`` does, and so does
the server's group code) is what lets ``error_from_wire`` map these codes onto these classes.

Families: ``LeaseLostError`` and ``UnknownMemberError`` are the fencing answers a worker handles
(stop processing the shard; rejoin); the others are ordinary expected conditions.
Codes are part of the protocol: never rename one, only add.
"""

from __future__ import annotations

from .errors import ERRORS_BY_CODE, InvalidArgumentError, StreamdError


class LeaseLostError(StreamdError):
    """Fenced: the caller is not the current holder of the shard's lease at that lease epoch.

    The lease expired, was revoked, or was granted again with a newer epoch; the checkpoint was
    not stored. The worker must stop processing the shard. ``details``: shard_id, epoch (the
    caller's), current_epoch, owner (may be None).
    """

    code = "LEASE_LOST"


class UnknownMemberError(StreamdError):
    """The member is not in the group (its session expired, or it left): it holds no lease.

    The worker drops every shard it was processing and joins again.
    """

    code = "UNKNOWN_MEMBER"


class GroupNotFoundError(StreamdError):
    """The stream has no consumer group of that name."""

    code = "GROUP_NOT_FOUND"


class GroupActiveError(StreamdError):
    """The group has live members; the operation (reset, delete) needs ``force``."""

    code = "GROUP_ACTIVE"


class InvalidCheckpointError(InvalidArgumentError):
    """A checkpoint names another shard's sequence, goes backwards, or ends an open shard."""

    code = "INVALID_CHECKPOINT"


GROUP_ERRORS: tuple[type[StreamdError], ...] = (
    LeaseLostError,
    UnknownMemberError,
    GroupNotFoundError,
    GroupActiveError,
    InvalidCheckpointError,
)

for _cls in GROUP_ERRORS:
    assert ERRORS_BY_CODE.get(_cls.code, _cls) is _cls, f"code {_cls.code} is taken"
    ERRORS_BY_CODE[_cls.code] = _cls
