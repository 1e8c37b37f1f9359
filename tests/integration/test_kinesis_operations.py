"""Every operation of botocore's Kinesis model against a real gateway, the account id in ARNs
(``--kinesis-account-id``), enhanced monitoring (describe and per-shard Prometheus metrics),
resource policies and the account settings, all through boto3 unchanged."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.model import Shape

from streamd.frontends.kinesis.operations import OPERATIONS, UNSUPPORTED
from streamd.testing import ServerProcess
from streamd.testing.process import free_ports

from .aws import kinesis_client

ACCOUNT = "123456789012"  # moto's
REGION = "us-east-1"
ARN_PREFIX = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/"
MODEL = botocore.session.get_session().get_service_model("kinesis")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    (metrics_port,) = free_ports("127.0.0.1", 1)
    with ServerProcess(
        tmp_path_factory.mktemp("kops") / "data",
        fsync="never",
        kinesis=True,
        extra_args=[
            "--kinesis-account-id",
            ACCOUNT,
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        ],
    ) as process:
        process.metrics_port = metrics_port  # type: ignore[attr-defined]
        yield process


@pytest.fixture(scope="module")
def kinesis(gateway: ServerProcess) -> Iterator[Any]:
    client = kinesis_client(gateway, region=REGION)
    yield client
    client.close()


def new_stream(kinesis: Any, shards: int = 1) -> str:
    name = f"ops-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    return name


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = exc.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


# -- every operation of the model -----------------------------------------------------------------


def example(shape: Shape, member: str, known: dict[str, Any]) -> Any:
    """A value botocore's client-side validation accepts for ``shape``: required members, and
    the members ``known`` gives real values for (the stream, its ARN, a consumer, ...)."""
    if member in known:
        return known[member]
    kind = shape.type_name
    if kind == "structure":
        return {
            name: example(sub, name, known)
            for name, sub in shape.members.items()  # type: ignore[attr-defined]
            if name in shape.required_members or name in known  # type: ignore[attr-defined]
        }
    if kind == "list":
        return [example(shape.member, member, known)] * max(1, shape.metadata.get("min", 1))  # type: ignore[attr-defined]
    if kind == "map":
        return {}
    if kind == "string":
        if shape.enum:  # type: ignore[attr-defined]
            return shape.enum[0]  # type: ignore[attr-defined]
        return "a" * max(1, shape.metadata.get("min", 1))
    if kind in ("integer", "long"):
        return max(1, shape.metadata.get("min", 1))
    if kind == "boolean":
        return False
    if kind == "timestamp":
        return datetime.now(UTC)
    if kind == "blob":
        return b"x"
    raise AssertionError(f"no example for {kind}")


def test_the_operation_sets_are_botocores_model() -> None:
    model = set(MODEL.operation_names)
    assert OPERATIONS.keys() | UNSUPPORTED == model, "list new botocore operations in operations.py"
    assert not OPERATIONS.keys() & UNSUPPORTED


def test_every_model_operation_answers_for_real_or_says_not_supported(kinesis: Any) -> None:
    name = new_stream(kinesis)
    arn = ARN_PREFIX + name
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="ops")["Consumer"]
    iterator = kinesis.get_shard_iterator(
        StreamName=name, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    known = {
        "StreamName": name,
        "StreamARN": arn,
        "ResourceARN": arn,
        "ConsumerARN": consumer["ConsumerARN"],
        "ConsumerName": "ops2",
        "ShardId": "shardId-000000000000",
        "ShardToSplit": "shardId-000000000000",
        "ShardIterator": iterator,
        "PartitionKey": "k",
        "Policy": '{"Version": "2012-10-17", "Statement": []}',
        "StartingPosition": {"Type": "TRIM_HORIZON"},
    }
    # DeleteStream last, so that the others see the stream.
    names = sorted(MODEL.operation_names, key=lambda op: op == "DeleteStream")
    answered: dict[str, str] = {}
    for op in names:
        operation = MODEL.operation_model(op)
        params = example(operation.input_shape, "", known) if operation.input_shape else {}
        try:
            result = kinesis._make_api_call(op, params)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
            message = exc.response["Error"]["Message"]
            assert status == 400, (op, code, status, message)
            assert code not in ("UnknownOperationException", "InternalFailureException"), op
            if op in UNSUPPORTED:
                assert code == "InvalidArgumentException", op
                assert message == f"operation {op} is not supported by streamd", op
            answered[op] = code
        else:
            assert op in OPERATIONS, f"{op} answered although listed as not supported"
            if "EventStream" in result:  # SubscribeToShard: the first event, then hang up
                stream = result["EventStream"]
                next(iter(stream))
                stream.close()
            answered[op] = "ok"
    assert set(answered) == set(MODEL.operation_names)
    # The implemented settings operations really ran with these example values.
    for op in (
        "EnableEnhancedMonitoring",
        "PutResourcePolicy",
        "DescribeAccountSettings",
        "UpdateMaxRecordSize",
    ):
        assert answered[op] == "ok", (op, answered[op])


# -- the account id -------------------------------------------------------------------------------


def test_arns_carry_the_configured_account_id(kinesis: Any) -> None:
    name = new_stream(kinesis)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamARN"] == ARN_PREFIX + name
    assert kinesis.describe_stream(StreamARN=ARN_PREFIX + name)["StreamDescription"][
        "StreamARN"
    ] == (ARN_PREFIX + name)
    consumer = kinesis.register_stream_consumer(StreamARN=ARN_PREFIX + name, ConsumerName="c")
    consumer_arn = consumer["Consumer"]["ConsumerARN"]
    assert consumer_arn.startswith(f"{ARN_PREFIX}{name}/consumer/c:")
    described = kinesis.describe_stream_consumer(ConsumerARN=consumer_arn)
    assert described["ConsumerDescription"]["StreamARN"] == ARN_PREFIX + name


def test_arns_of_another_account_are_refused_naming_the_flag(kinesis: Any) -> None:
    name = new_stream(kinesis)
    other = f"arn:aws:kinesis:{REGION}:000000000000:stream/{name}"
    with pytest.raises(ClientError) as exc:
        kinesis.describe_stream(StreamARN=other)
    code, status, message = error_of(exc)
    assert (code, status) == ("ResourceNotFoundException", 400)
    assert f"serves account {ACCOUNT}" in message and "--kinesis-account-id" in message
    with pytest.raises(ClientError) as exc:
        kinesis.put_record(StreamARN=other, Data=b"x", PartitionKey="k")
    assert error_of(exc)[0] == "ResourceNotFoundException"
    consumer = kinesis.register_stream_consumer(StreamARN=ARN_PREFIX + name, ConsumerName="c")
    foreign = consumer["Consumer"]["ConsumerARN"].replace(ACCOUNT, "000000000000")
    with pytest.raises(ClientError) as exc:
        kinesis.describe_stream_consumer(ConsumerARN=foreign)
    code, status, message = error_of(exc)
    assert (code, status) == ("ResourceNotFoundException", 400)
    assert "ConsumerARN" in message and f"serves account {ACCOUNT}" in message


# -- enhanced monitoring --------------------------------------------------------------------------


def scrape(gateway: ServerProcess) -> str:
    port = gateway.metrics_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    return text


def series(text: str, metric: str, stream: str) -> dict[str, float]:
    """shard -> value of ``metric`` for ``stream`` in a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") and f'stream="{stream}"' in line:
            labels, value = line.rsplit(" ", 1)
            shard = labels.split('shard="', 1)[1].split('"', 1)[0]
            found[shard] = float(value)
    return found


def test_enhanced_monitoring_answers_describes_and_exports_per_shard(
    kinesis: Any, gateway: ServerProcess
) -> None:
    name, quiet = new_stream(kinesis, shards=2), new_stream(kinesis)
    answer = kinesis.enable_enhanced_monitoring(
        StreamName=name, ShardLevelMetrics=["IncomingRecords", "OutgoingRecords"]
    )
    assert answer["CurrentShardLevelMetrics"] == []
    assert answer["DesiredShardLevelMetrics"] == ["IncomingRecords", "OutgoingRecords"]
    assert answer["StreamARN"] == ARN_PREFIX + name
    kinesis.put_records(
        StreamName=name,
        Records=[{"Data": b"x" * 10, "PartitionKey": f"k{i}"} for i in range(20)],
    )
    kinesis.put_record(StreamName=quiet, Data=b"q", PartitionKey="k")
    shard = "shardId-000000000000"
    it = kinesis.get_shard_iterator(
        StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )
    read = kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]
    text = scrape(gateway)
    incoming = series(text, "streamd_shard_incoming_records_total", name)
    assert set(incoming) == {"shardId-000000000000", "shardId-000000000001"}
    assert sum(incoming.values()) == 20
    assert series(text, "streamd_shard_outgoing_records_total", name)[shard] >= len(read) > 0
    assert series(text, "streamd_shard_incoming_bytes_total", name) == {}  # not enabled
    assert series(text, "streamd_shard_incoming_records_total", quiet) == {}

    answer = kinesis.enable_enhanced_monitoring(StreamName=name, ShardLevelMetrics=["ALL"])
    assert len(answer["DesiredShardLevelMetrics"]) == 7
    answer = kinesis.disable_enhanced_monitoring(
        StreamARN=ARN_PREFIX + name, ShardLevelMetrics=["OutgoingRecords", "IncomingRecords"]
    )
    assert len(answer["CurrentShardLevelMetrics"]) == 7
    left = sorted(answer["DesiredShardLevelMetrics"])
    assert "IncomingRecords" not in left and len(left) == 5
    described = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    assert sorted(described["EnhancedMonitoring"][0]["ShardLevelMetrics"]) == left
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert sorted(summary["EnhancedMonitoring"][0]["ShardLevelMetrics"]) == left
    text = scrape(gateway)
    assert series(text, "streamd_shard_incoming_records_total", name) == {}
    assert sum(series(text, "streamd_shard_incoming_bytes_total", name).values()) >= 200
    assert set(series(text, "streamd_shard_iterator_age_seconds", name)) == set(incoming)
    with pytest.raises(ClientError) as exc:
        kinesis.enable_enhanced_monitoring(StreamName=name, ShardLevelMetrics=["Nope"])
    assert error_of(exc)[:2] == ("ValidationException", 400)


# -- resource policies, account settings ----------------------------------------------------------


def test_resource_policies_are_stored_returned_and_deleted(kinesis: Any) -> None:
    name = new_stream(kinesis)
    arn = ARN_PREFIX + name
    assert kinesis.get_resource_policy(ResourceARN=arn)["Policy"] == "{}"
    policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}'
    kinesis.put_resource_policy(ResourceARN=arn, Policy=policy)
    assert kinesis.get_resource_policy(ResourceARN=arn)["Policy"] == policy
    kinesis.delete_resource_policy(ResourceARN=arn)
    assert kinesis.get_resource_policy(ResourceARN=arn)["Policy"] == "{}"
    kinesis.delete_resource_policy(ResourceARN=arn)  # none: not an error
    for bad, code in (
        ("not json", "InvalidArgumentException"),
        ("[1]", "InvalidArgumentException"),
    ):
        with pytest.raises(ClientError) as exc:
            kinesis.put_resource_policy(ResourceARN=arn, Policy=bad)
        assert error_of(exc)[:2] == (code, 400)
    with pytest.raises(ClientError) as exc:
        kinesis.get_resource_policy(ResourceARN=ARN_PREFIX + "no-such-stream")
    assert error_of(exc)[0] == "ResourceNotFoundException"


def test_account_settings_say_there_is_no_billing_commitment(kinesis: Any) -> None:
    settings = kinesis.describe_account_settings()
    assert settings["MinimumThroughputBillingCommitment"] == {"Status": "DISABLED"}
    updated = kinesis.update_account_settings(
        MinimumThroughputBillingCommitment={"Status": "DISABLED"}
    )
    assert updated["MinimumThroughputBillingCommitment"] == {"Status": "DISABLED"}
    with pytest.raises(ClientError) as exc:
        kinesis.update_account_settings(MinimumThroughputBillingCommitment={"Status": "ENABLED"})
    assert error_of(exc)[:2] == ("InvalidArgumentException", 400)


def test_settings_survive_a_restart(kinesis: Any, gateway: ServerProcess) -> None:
    name = new_stream(kinesis)
    arn = ARN_PREFIX + name
    kinesis.put_resource_policy(ResourceARN=arn, Policy='{"Statement": []}')
    kinesis.enable_enhanced_monitoring(StreamName=name, ShardLevelMetrics=["IncomingBytes"])
    kinesis.update_max_record_size(StreamARN=arn, MaxRecordSizeInKiB=2048)
    gateway.terminate()
    gateway.restart()
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["EnhancedMonitoring"] == [{"ShardLevelMetrics": ["IncomingBytes"]}]
    assert summary["MaxRecordSizeInKiB"] == 2048
    assert kinesis.get_resource_policy(ResourceARN=arn)["Policy"] == '{"Statement": []}'


def test_throttling_by_quota_shows_in_the_shard_level_throttle_metrics(
    kinesis: Any, gateway: ServerProcess
) -> None:
    name = f"ops-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(
        StreamName=name,
        ShardCount=1,
        Tags={"streamd:quota:write-records-per-s": "5", "streamd:quota:read-calls-per-s": "1"},
    )
    kinesis.enable_enhanced_monitoring(
        StreamName=name,
        ShardLevelMetrics=[
            "WriteProvisionedThroughputExceeded",
            "ReadProvisionedThroughputExceeded",
        ],
    )
    answer = kinesis.put_records(
        StreamName=name, Records=[{"Data": b"x", "PartitionKey": f"k{i}"} for i in range(20)]
    )
    refused = answer["FailedRecordCount"]
    assert refused >= 10  # a burst of 5 records a second, give or take the refill
    it = kinesis.get_shard_iterator(
        StreamName=name, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    throttled_reads = 0
    # One attempt per call: a retried call that passed on its retry would hide a refused read.
    reader = kinesis_client(gateway, region=REGION, retries={"total_max_attempts": 1})
    for _ in range(3):
        try:
            it = reader.get_records(ShardIterator=it)["NextShardIterator"]
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
            throttled_reads += 1
    assert throttled_reads >= 1
    text = scrape(gateway)
    shard = "shardId-000000000000"
    assert series(text, "streamd_shard_write_throttled_records_total", name) == {shard: refused}
    assert series(text, "streamd_shard_read_throttled_total", name) == {shard: throttled_reads}
