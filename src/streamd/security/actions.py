"""What each operation needs: native op or Kinesis operation -> (action, resource) (pure).

The resource is the stream a request names (the policy's patterns match it), or ``"*"`` for an
operation over all streams (list) or the node itself (cluster operations). A request whose
stream argument is missing or not a string gets ``"*"``: the rule must then allow the action on
every stream, and the operation refuses the argument itself afterwards if the check passes.
An operation missing from a table needs ``cluster:admin`` on ``"*"`` (fail closed: a new
operation is not open until someone says what it needs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

ANY_RESOURCE: Final = "*"

NATIVE_ACTIONS: Final[Mapping[str, str]] = {
    "create_stream": "stream:create",
    "delete_stream": "stream:delete",
    "list_streams": "stream:list",
    "describe_stream": "stream:describe",
    "update_retention": "stream:configure",
    "set_encryption": "stream:configure",
    "put_records": "stream:put",
    "append_batch": "stream:put",
    "read": "stream:read",
    "split_shard": "stream:reshard",
    "merge_shards": "stream:reshard",
    "resize_stream": "stream:reshard",
    "quarantine_range": "cluster:admin",
    "cluster_nodes": "cluster:admin",
    "node_stats": "cluster:admin",  # every shard of the node: what `streamd top` samples
    "seal_shard": "cluster:admin",
    "unseal_shard": "cluster:admin",
    "replica_messages": "cluster:admin",  # replication between nodes (cluster mode)
    "group_join": "group:consume",
    "group_heartbeat": "group:consume",
    "group_leave": "group:consume",
    "group_checkpoint": "group:consume",
    "group_describe": "group:consume",
    "group_create": "group:admin",
    "group_list": "group:admin",
    "group_reset": "group:admin",
    "group_delete": "group:admin",
}
# Allowed only with cluster:admin, but they change nothing an operator audits: node-to-node
# replication (many calls a second) and reads of the node's state. A refusal is still audited.
UNAUDITED_NATIVE_OPS: Final = frozenset({"replica_messages", "cluster_nodes", "node_stats"})
_NATIVE_OVER_ALL: Final = frozenset(
    {"list_streams", "cluster_nodes", "node_stats", "replica_messages"}
)

KINESIS_ACTIONS: Final[Mapping[str, str]] = {
    "CreateStream": "stream:create",
    "DeleteStream": "stream:delete",
    "ListStreams": "stream:list",
    "DescribeStream": "stream:describe",
    "DescribeStreamSummary": "stream:describe",
    "ListShards": "stream:describe",
    "DescribeLimits": "stream:list",
    "PutRecord": "stream:put",
    "PutRecords": "stream:put",
    "GetShardIterator": "stream:read",
    "GetRecords": "stream:read",
    "SubscribeToShard": "stream:read",
    "SplitShard": "stream:reshard",
    "MergeShards": "stream:reshard",
    "UpdateShardCount": "stream:reshard",
    "UpdateStreamMode": "stream:reshard",  # ON_DEMAND streams reshard themselves
    "IncreaseStreamRetentionPeriod": "stream:configure",
    "DecreaseStreamRetentionPeriod": "stream:configure",
    "AddTagsToStream": "stream:configure",
    "RemoveTagsFromStream": "stream:configure",
    "TagResource": "stream:configure",
    "UntagResource": "stream:configure",
    "ListTagsForStream": "stream:describe",
    "ListTagsForResource": "stream:describe",
    "RegisterStreamConsumer": "group:admin",
    "DeregisterStreamConsumer": "group:admin",
    "DescribeStreamConsumer": "group:consume",
    "ListStreamConsumers": "group:consume",
    "EnableEnhancedMonitoring": "stream:configure",
    "DisableEnhancedMonitoring": "stream:configure",
    "GetResourcePolicy": "stream:describe",
    "PutResourcePolicy": "stream:configure",
    "DeleteResourcePolicy": "stream:configure",
    "UpdateMaxRecordSize": "stream:configure",
    "StartStreamEncryption": "stream:configure",
    "StopStreamEncryption": "stream:configure",
    "DescribeAccountSettings": "stream:list",
    "UpdateAccountSettings": "cluster:admin",
}
KINESIS_OVER_ALL: Final = frozenset(
    {"ListStreams", "DescribeLimits", "DescribeAccountSettings", "UpdateAccountSettings"}
)
UNLISTED_ACTION: Final = "cluster:admin"


def native_action(op: str, args: Mapping[str, Any]) -> tuple[str, str]:
    """(action, resource) of a native request."""
    action = NATIVE_ACTIONS.get(op)
    if action is None:
        return UNLISTED_ACTION, ANY_RESOURCE
    if op in _NATIVE_OVER_ALL:
        return action, ANY_RESOURCE
    stream = args.get("stream")
    return action, stream if isinstance(stream, str) and stream else ANY_RESOURCE


def kinesis_action(operation: str) -> str:
    return KINESIS_ACTIONS.get(operation, UNLISTED_ACTION)
