"""Native op ``replica_messages``: replication envelopes from another node, answered at once.

Arguments: ``from`` (the sending node id, text), ``session`` and ``seq`` (integers: the order
of this request among the sender's, see replication/transport.py) and ``envelopes`` (a list of
at most ``HostConfig.envelopes_per_request_max`` envelope maps, replication/codec.py). The
answer is ``{}`` before any replica has stepped: delivery is fire and forget, and an envelope
that is malformed, or for a shard this node does not host, is dropped and counted, never an
error for the whole request (the other envelopes still count). Only a request whose own shape
is wrong gets INVALID_ARGUMENT.

``bind_replication_handlers(host)`` gives the server the op bound to the node's ReplicaHost;
api.bind_handlers merges it in cluster mode (the composition root, streamd/node.py, decides).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from streamd_client.errors import InvalidArgumentError

from ...replication.transport import OP_REPLICA_MESSAGES, ReplicaHost

INT_ARG_MAX = 2**63 - 1
SENDER_CHARS_MAX = 128


async def replica_messages(host: ReplicaHost, args: dict[str, Any]) -> dict[str, Any]:
    sender, session, seq = args.get("from"), args.get("session"), args.get("seq")
    envelopes = args.get("envelopes")
    if type(sender) is not str or not 0 < len(sender) <= SENDER_CHARS_MAX:
        raise InvalidArgumentError(f"argument 'from' must be a node id of 1..{SENDER_CHARS_MAX}")
    for name, value in (("session", session), ("seq", seq)):
        if type(value) is not int or not 0 <= value <= INT_ARG_MAX:
            raise InvalidArgumentError(f"argument {name!r} must be an integer in 0..2**63-1")
    limit = host.config.envelopes_per_request_max
    if type(envelopes) is not list or len(envelopes) > limit:
        raise InvalidArgumentError(f"argument 'envelopes' must be a list of at most {limit}")
    assert isinstance(session, int) and isinstance(seq, int)
    host.accept(sender, session, seq, envelopes)
    return {}


def bind_replication_handlers(
    host: ReplicaHost,
) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
    async def bound(args: dict[str, Any]) -> dict[str, Any]:
        return await replica_messages(host, args)

    return {OP_REPLICA_MESSAGES: bound}
