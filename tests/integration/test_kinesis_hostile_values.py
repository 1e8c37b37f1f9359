"""Values no Kinesis operation may choke on (issue 10, items 5 and 9): a lone surrogate in a
partition key (JSON escape or raw bytes), integers of more than 4,300 digits, digits that are not
ASCII, and CBOR bodies with shared references. Each is a typed 400 (ValidationException,
InvalidArgumentException or SerializationException), never a 500, and the gateway stays up."""

# ruff: noqa: E501  (tables of request cases read best one per line)

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Iterator

import boto3
import pytest

from streamd.testing import ServerProcess

from .test_kinesis_protocol import CBOR_TYPE, JSON_TYPE, address, post


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("kinesis-hostile") / "data", fsync="never", kinesis=True
    ) as process:
        yield process


@pytest.fixture(scope="module")
def stream(gateway: ServerProcess) -> str:
    name = f"kh-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "kinesis",
        endpoint_url=gateway.kinesis_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    client.create_stream(StreamName=name, ShardCount=1)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    return name


def _error(
    gateway: ServerProcess, operation: str, body: bytes, content_type: str = JSON_TYPE
) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(*address(gateway), timeout=10)
    try:
        status, _, raw = post(conn, operation, body, content_type)
    finally:
        conn.close()
    if content_type == CBOR_TYPE:
        from streamd.frontends.kinesis import cbor

        doc = cbor.loads(raw)
    else:
        doc = json.loads(raw)
    return status, doc.get("__type", ""), doc.get("message", "")


@pytest.mark.parametrize(
    ("operation", "template", "expected"),
    [
        ("PutRecord", '{"StreamName": "%s", "PartitionKey": "\\ud800", "Data": "eA=="}', "ValidationException"),
        ("PutRecord", '{"StreamName": "%s", "PartitionKey": "ok\\udfffok", "Data": "eA=="}', "ValidationException"),
        ("PutRecords", '{"StreamName": "%s", "Records": [{"PartitionKey": "\\udbff", "Data": "eA=="}]}', "ValidationException"),
        ("AddTagsToStream", '{"StreamName": "%s", "Tags": {"\\ud800": "v"}}', "ValidationException"),
        ("CreateStream", '{"StreamName": "%s-n", "ShardCount": 1' + "0" * 5000 + "}", "ValidationException"),
        ("ListShards", '{"StreamName": "%s", "MaxResults": -1' + "0" * 5000 + "}", "ValidationException"),
        ("PutRecord", '{"StreamName": "%s", "PartitionKey": "k", "Data": "eA==", "ExplicitHashKey": "\\u00b2"}', "ValidationException"),
        ("PutRecord", '{"StreamName": "%s", "PartitionKey": "k", "Data": "eA==", "ExplicitHashKey": "' + "9" * 5000 + '"}', "ValidationException"),
        ("GetShardIterator", '{"StreamName": "%s", "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": "' + "1" * 5000 + '"}', None),
        ("GetShardIterator", '{"StreamName": "%s", "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": "' + "\\u00b2" * 56 + '"}', None),
    ],
)  # fmt: skip
def test_hostile_json_values_get_a_typed_400(
    gateway: ServerProcess, stream: str, operation: str, template: str, expected: str | None
) -> None:
    status, type_name, message = _error(gateway, operation, (template % stream).encode())
    assert status == 400, (status, type_name, message)
    assert type_name in (
        {expected} if expected else {"ValidationException", "InvalidArgumentException"}
    )
    assert len(message) < 400


@pytest.mark.parametrize("operation", ["ListStreams", "ListStreamConsumers"])
def test_a_deeply_nested_next_token_is_invalid_argument(
    gateway: ServerProcess, stream: str, operation: str
) -> None:
    token = base64.urlsafe_b64encode(b"[" * 3000).decode()
    fields = (
        {"NextToken": token}
        if operation == "ListStreams"
        else {"NextToken": token, "StreamARN": _arn(stream)}
    )
    status, type_name, _ = _error(gateway, operation, json.dumps(fields).encode())
    assert (status, type_name) == (400, "InvalidArgumentException")  # main: 500 RecursionError


def _arn(stream: str) -> str:
    return f"arn:aws:kinesis:us-east-1:000000000000:stream/{stream}"


def test_a_raw_utf8_surrogate_in_json_is_a_validation_error(
    gateway: ServerProcess, stream: str
) -> None:
    body = b'{"StreamName": "%s", "PartitionKey": "\xed\xa0\x80", "Data": "eA=="}' % stream.encode()
    status, type_name, _ = _error(gateway, "PutRecord", body)
    assert (status, type_name) == (400, "ValidationException")


def test_cbor_shared_references_are_a_serialization_error(
    gateway: ServerProcess, stream: str
) -> None:
    dag = b"\xd8\x1c\x80"
    for level in range(40, 0, -1):
        dag = b"\xd8\x1c\x82" + dag + b"\xd8\x1d\x18" + bytes([level])
    body = b"\xa2\x6aStreamName" + bytes([0x60 + len(stream)]) + stream.encode() + b"\x64Tags" + dag
    status, type_name, _ = _error(gateway, "AddTagsToStream", body, CBOR_TYPE)
    assert (status, type_name) == (400, "SerializationException")
    status, _, _ = _error(gateway, "ListStreams", b"{}")
    assert status == 200
