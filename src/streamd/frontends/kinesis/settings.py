"""Stream and account settings: enhanced monitoring, resource policies, the max record size and
the account settings, each stored in the stream's catalog document (``StreamMeta``) through
``engine.update_settings``, so they are as durable as the stream and every node sees them.

- Enable/DisableEnhancedMonitoring change ``shard_level_metrics`` (``ALL`` stands for the seven
  names); the answer carries the set before (Current) and after (Desired) the call, as Kinesis.
  ``streamd/monitoring.py`` exports the enabled ones per shard as Prometheus metrics.
- Put/Get/DeleteResourcePolicy store, return and remove the policy text of a stream (a JSON
  object of at most ``POLICY_BYTES_MAX``). Not enforced: streamd has no authorization yet.
  GetResourcePolicy of a stream without one answers ``{}``; deleting none is not an error.
- UpdateMaxRecordSize sets ``max_record_bytes`` (1024..10240 KiB); the write paths (native and
  Kinesis) read it from the stream's metadata.
- DescribeAccountSettings / UpdateAccountSettings: the one account setting botocore models is a
  minimum-throughput *billing* commitment; streamd bills nothing, so it is DISABLED and enabling
  it is refused (InvalidArgumentException), never faked.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Final

from streamd_client.errors import ResourceInUseError
from streamd_client.model import RECORD_DATA_BYTES_CEILING
from streamd_client.summary import summary

from ...catalog import StreamMeta
from .args import opt_enum, opt_map, req_int, req_str, str_list
from .errors import invalid_argument, validation
from .streams import STREAM_ARN_RE, resolve_stream
from .types import GatewayContext, Operation

SHARD_LEVEL_METRICS: Final = (
    "IncomingBytes",
    "IncomingRecords",
    "OutgoingBytes",
    "OutgoingRecords",
    "WriteProvisionedThroughputExceeded",
    "ReadProvisionedThroughputExceeded",
    "IteratorAgeMilliseconds",
)
_ALL: Final = "ALL"
POLICY_BYTES_MAX: Final = 20 * 1024  # streamd's bound on one stored policy document
RECORD_SIZE_KIB_MIN: Final = 1024
RECORD_SIZE_KIB_MAX: Final = RECORD_DATA_BYTES_CEILING // 1024  # 10240


def _active(meta: StreamMeta) -> StreamMeta:
    """Kinesis refuses settings changes while a stream is not ACTIVE (ResourceInUse)."""
    if meta.status != "ACTIVE":
        raise ResourceInUseError(
            f"stream {meta.name!r} is {meta.status}; try again when it is ACTIVE",
            status=meta.status,
        )
    return meta


# -- enhanced monitoring --------------------------------------------------------------------------


def _metric_names(body: dict[str, Any]) -> set[str]:
    names = str_list(body, "ShardLevelMetrics", max_len=7)
    if not names:
        raise validation(
            "1 validation error detected: Value null at 'shardLevelMetrics' failed to satisfy "
            "constraint: Member must not be null and must hold 1..7 names"
        )
    allowed = (*SHARD_LEVEL_METRICS, _ALL)
    for name in names:
        if name not in allowed:
            raise validation(
                f"1 validation error detected: Value {name!r} at 'shardLevelMetrics' failed to "
                f"satisfy constraint: Member must satisfy enum value set: [{', '.join(allowed)}]"
            )
    return set(SHARD_LEVEL_METRICS) if _ALL in names else set(names)


async def _change_monitoring(
    ctx: GatewayContext, body: dict[str, Any], *, enable: bool
) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    names = _metric_names(body)
    before: tuple[str, ...] = ()

    def change(meta: StreamMeta) -> StreamMeta:
        nonlocal before
        before = _active(meta).shard_level_metrics
        current = set(before)
        wanted = current | names if enable else current - names
        return replace(meta, shard_level_metrics=tuple(sorted(wanted)))

    after = await ctx.engine.update_settings(name, change, setting="enhanced_monitoring")
    return {
        "StreamName": name,
        "StreamARN": ctx.stream_arn(name),
        "CurrentShardLevelMetrics": list(before),
        "DesiredShardLevelMetrics": list(after.shard_level_metrics),
    }


async def enable_enhanced_monitoring(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    return await _change_monitoring(ctx, body, enable=True)


async def disable_enhanced_monitoring(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    return await _change_monitoring(ctx, body, enable=False)


# -- resource policies ----------------------------------------------------------------------------


def _policy_stream(ctx: GatewayContext, body: dict[str, Any]) -> str:
    arn = req_str(body, "ResourceARN", max_len=2048)
    if "/consumer/" in arn:
        raise invalid_argument("resource policies on stream consumers are not supported by streamd")
    if STREAM_ARN_RE.fullmatch(arn) is None:
        raise invalid_argument(
            f"ResourceARN {summary(arn, 300)} is not a Kinesis stream ARN (streamd keeps "
            "policies of streams only)"
        )
    return resolve_stream(ctx, {"StreamARN": arn})


def _policy_text(body: dict[str, Any]) -> str:
    text = req_str(body, "Policy", max_len=POLICY_BYTES_MAX)
    if len(text.encode()) > POLICY_BYTES_MAX:
        raise validation(f"Policy is larger than {POLICY_BYTES_MAX} bytes")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise invalid_argument("Policy is not a JSON document") from None
    if not isinstance(doc, dict):
        raise invalid_argument("Policy must be a JSON object")
    return text


async def put_resource_policy(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = _policy_stream(ctx, body)
    text = _policy_text(body)
    await ctx.engine.update_settings(
        name, lambda m: replace(m, resource_policy=text), setting="resource_policy"
    )
    return {}


async def get_resource_policy(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    policy = ctx.engine.stream_meta(_policy_stream(ctx, body)).resource_policy
    return {"Policy": "{}" if policy is None else policy}


async def delete_resource_policy(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = _policy_stream(ctx, body)
    if ctx.engine.stream_meta(name).resource_policy is not None:
        await ctx.engine.update_settings(
            name, lambda m: replace(m, resource_policy=None), setting="resource_policy"
        )
    return {}


# -- record size, account -------------------------------------------------------------------------


async def update_max_record_size(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    kib = req_int(body, "MaxRecordSizeInKiB", low=RECORD_SIZE_KIB_MIN, high=RECORD_SIZE_KIB_MAX)

    def change(meta: StreamMeta) -> StreamMeta:
        return replace(_active(meta), max_record_bytes=kib * 1024)

    await ctx.engine.update_settings(name, change, setting="max_record_size")
    return {}


_BILLING_OFF: Final = {"MinimumThroughputBillingCommitment": {"Status": "DISABLED"}}


async def describe_account_settings(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    return dict(_BILLING_OFF)


async def update_account_settings(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    commitment = opt_map(body, "MinimumThroughputBillingCommitment")
    if commitment is None:
        raise validation("MinimumThroughputBillingCommitment must not be null")
    status = opt_enum(commitment, "Status", ("ENABLED", "DISABLED"))
    if status is None:
        raise validation("MinimumThroughputBillingCommitment.Status must not be null")
    if status == "ENABLED":
        raise invalid_argument(
            "streamd bills nothing: a minimum throughput billing commitment cannot be enabled"
        )
    return dict(_BILLING_OFF)


SETTINGS_OPERATIONS: Final[dict[str, Operation]] = {
    "EnableEnhancedMonitoring": enable_enhanced_monitoring,
    "DisableEnhancedMonitoring": disable_enhanced_monitoring,
    "PutResourcePolicy": put_resource_policy,
    "GetResourcePolicy": get_resource_policy,
    "DeleteResourcePolicy": delete_resource_policy,
    "UpdateMaxRecordSize": update_max_record_size,
    "DescribeAccountSettings": describe_account_settings,
    "UpdateAccountSettings": update_account_settings,
}
