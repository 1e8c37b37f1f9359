"""The gateway's access checks: the stream a Kinesis request acts on, and its authorization.

``resource_of`` finds the stream name the way the operations themselves do (StreamName or
StreamARN through ``resolve_stream``; ResourceARN for the tag operations; ConsumerARN for the
consumer operations; the ShardIterator's stream for GetRecords, decoded with the data dir's
key). A request whose stream cannot be found this way is checked against ``"*"``; the operation
then refuses the malformed argument itself if the check passes. ``authorize`` runs after the
signature and before the operation, so a refused request changes nothing.
"""

from __future__ import annotations

from typing import Any

from ...security.actions import ANY_RESOURCE, KINESIS_OVER_ALL, kinesis_action
from ...security.guard import ANONYMOUS, Guard, audit, is_admin
from ...security.principals import Principal
from ...shard import now_ms
from .consumers import parse_consumer_arn
from .iterators import IteratorError, IteratorExpiredError, decode_iterator
from .streams import resolve_stream, resource_stream
from .types import GatewayContext, KinesisError

PROTOCOL = "kinesis"


def resource_of(ctx: GatewayContext, operation: str, body: dict[str, Any]) -> str:
    if operation in KINESIS_OVER_ALL:
        return ANY_RESOURCE
    try:
        if operation == "GetRecords":
            token = body.get("ShardIterator")
            if isinstance(token, str):
                return decode_iterator(ctx.iterator_key, token, now_ms()).stream
            return ANY_RESOURCE
        if "ConsumerARN" in body:
            return parse_consumer_arn(body["ConsumerARN"]).stream_name
        if "ResourceARN" in body:
            return resource_stream(ctx, body)
        return resolve_stream(ctx, body)
    except (KinesisError, IteratorError, IteratorExpiredError):
        return ANY_RESOURCE


def authorize(
    guard: Guard,
    principal: Principal | None,
    ctx: GatewayContext,
    operation: str,
    body: dict[str, Any],
    peer: str,
) -> tuple[str, str]:
    """(action, resource). Raises AccessDeniedError (audited) unless allowed."""
    action, resource = kinesis_action(operation), resource_of(ctx, operation, body)
    guard.authorize(principal, action, resource, protocol=PROTOCOL, peer=peer)
    return action, resource


def audit_done(principal: Principal | None, action: str, resource: str, outcome: str) -> None:
    if is_admin(action):
        name = ANONYMOUS if principal is None else principal.name
        audit(name, action, resource, outcome, protocol=PROTOCOL, peer="")
