"""The Kinesis gateway below the SDK: CBOR bodies (built by botocore's own CBOR serializer and by
hand), raw HTTP (keep-alive, garbage, limits), the aws CLI, and records crossing between the
gateway and the native client byte-exact in both directions."""

# ruff: noqa: E501  (tables of request cases read best one per line)

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.model import ServiceModel
from botocore.serialize import RpcV2CBORSerializer

from streamd.frontends.kinesis import cbor
from streamd.testing import ServerProcess
from streamd_client import Position
from streamd_client.sync import connect

REGION = "us-east-1"
TARGET = "Kinesis_20131202."
CBOR_TYPE = "application/x-amz-cbor-1.1"
JSON_TYPE = "application/x-amz-json-1.1"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("kinesis-protocol") / "data", fsync="never", kinesis=True
    ) as process:
        yield process


@pytest.fixture
def name() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def address(gateway: ServerProcess) -> tuple[str, int]:
    host, port = gateway.kinesis_endpoint.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def post(
    conn: http.client.HTTPConnection, operation: str, body: bytes, content_type: str
) -> tuple[int, dict[str, str], bytes]:
    conn.request(
        "POST",
        "/",
        body=body,
        headers={"X-Amz-Target": TARGET + operation, "Content-Type": content_type},
    )
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def cbor_body(operation: str, params: dict[str, Any]) -> bytes:
    """A request body made by botocore's CBOR serializer from Kinesis's own service model."""
    loader = boto3.session.Session()._session.get_component("data_loader")
    model = ServiceModel(loader.load_service_model("kinesis", "service-2"), "kinesis")
    shape = model.operation_model(operation).input_shape
    out = bytearray()
    RpcV2CBORSerializer()._serialize_data_item(out, params, shape)
    return bytes(out)


def test_cbor_round_trip_with_botocore_bodies(gateway: ServerProcess, name: str) -> None:
    conn = http.client.HTTPConnection(*address(gateway), timeout=10)
    status, _, _ = post(conn, "CreateStream", cbor_body("CreateStream", {"StreamName": name, "ShardCount": 1}), CBOR_TYPE)  # fmt: skip
    assert status == 200
    put = cbor_body("PutRecord", {"StreamName": name, "Data": b"\x00\xffcbor", "PartitionKey": "k"})
    status, headers, raw = post(conn, "PutRecord", put, CBOR_TYPE)
    assert status == 200 and headers["content-type"] == CBOR_TYPE
    answer = cbor.loads(raw)
    assert answer["ShardId"] == "shardId-000000000000"
    params = {"StreamName": name, "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}  # fmt: skip
    status, _, raw = post(conn, "GetShardIterator", cbor_body("GetShardIterator", params), CBOR_TYPE)  # fmt: skip
    iterator = cbor.loads(raw)["ShardIterator"]
    status, _, raw = post(conn, "GetRecords", cbor_body("GetRecords", {"ShardIterator": iterator}), CBOR_TYPE)  # fmt: skip
    records = cbor.loads(raw)["Records"]
    # Blobs are byte strings; arrival times tag 1 around epoch milliseconds (the Java SDK's).
    assert records[0]["Data"] == b"\x00\xffcbor"
    assert raw.count(b"\xc1\x1b") == 1  # tag 1, then a 64-bit unsigned integer
    arrival = records[0]["ApproximateArrivalTimestamp"]
    assert isinstance(arrival, cbor.EpochTag) and arrival.value > 10**12
    # A timestamp sent by botocore's serializer (tag 1, seconds) is understood.
    at = {"StreamName": name, "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": 1}  # fmt: skip
    status, _, raw = post(conn, "GetShardIterator", cbor_body("GetShardIterator", at), CBOR_TYPE)
    assert status == 200
    # Errors in CBOR carry the same __type and message.
    status, headers, raw = post(conn, "DescribeStream", cbor.dumps({"StreamName": "nope-x"}), CBOR_TYPE)  # fmt: skip
    assert status == 400 and cbor.loads(raw)["__type"] == "ResourceNotFoundException"
    assert headers["x-amzn-errortype"].startswith("ResourceNotFoundException")
    conn.close()


def test_hand_built_cbor_with_java_style_millis(gateway: ServerProcess, name: str) -> None:
    conn = http.client.HTTPConnection(*address(gateway), timeout=10)
    # Indefinite-length map (Jackson writes those), text keys, a byte-string blob.
    create = b"\xbf" + cbor.dumps("StreamName")[0:] + cbor.dumps(name) + cbor.dumps("ShardCount") + b"\x01\xff"  # fmt: skip
    assert post(conn, "CreateStream", create, CBOR_TYPE)[0] == 200
    body = cbor.dumps({"StreamName": name, "Data": b"java", "PartitionKey": "j"})
    assert post(conn, "PutRecord", body, CBOR_TYPE)[0] == 200
    far_past_ms = cbor.EpochTag(1_000_000_000_000)  # 2001, in milliseconds
    body = cbor.dumps({"StreamName": name, "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": far_past_ms})  # fmt: skip
    status, _, raw = post(conn, "GetShardIterator", body, CBOR_TYPE)
    assert status == 200
    it = cbor.loads(raw)["ShardIterator"]
    status, _, raw = post(conn, "GetRecords", cbor.dumps({"ShardIterator": it}), CBOR_TYPE)
    assert [r["Data"] for r in cbor.loads(raw)["Records"]] == [b"java"]
    conn.close()


def test_keep_alive_and_http_errors(gateway: ServerProcess) -> None:
    conn = http.client.HTTPConnection(*address(gateway), timeout=10)
    for _ in range(3):  # one connection, several requests
        status, _, raw = post(conn, "ListStreams", b"{}", JSON_TYPE)
        assert status == 200 and "StreamNames" in json.loads(raw)
    status, _, raw = post(conn, "NoSuchThing", b"{}", JSON_TYPE)
    assert status == 400 and json.loads(raw)["__type"] == "UnknownOperationException"
    assert "NoSuchThing" in json.loads(raw)["message"]
    status, _, raw = post(conn, "ListStreams", b"{not json", JSON_TYPE)
    assert status == 400 and json.loads(raw)["__type"] == "SerializationException"
    status, _, raw = post(conn, "ListStreams", b"\xff\x00", CBOR_TYPE)
    assert status == 400 and cbor.loads(raw)["__type"] == "SerializationException"
    status, _, raw = post(conn, "ListStreams", b"{}", "text/plain")
    assert status == 400
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 405 and b"UnknownOperationException" in response.read()
    status, _, _ = post(conn, "ListStreams", b"{}", JSON_TYPE)  # still usable
    assert status == 200
    conn.close()


def test_garbage_and_oversized_requests_get_400_or_413_and_close(gateway: ServerProcess) -> None:
    for payload, expected in (
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), b" 400 "),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", b" 413 "),
        (b"POST / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 40_000 + b"\r\n\r\n", b" 400 "),
    ):
        with socket.create_connection(address(gateway), timeout=10) as sock:
            sock.sendall(payload)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert expected in answer.split(b"\r\n", 1)[0], answer[:200]
    # The server is fine afterwards.
    conn = http.client.HTTPConnection(*address(gateway), timeout=10)
    assert post(conn, "ListStreams", b"{}", JSON_TYPE)[0] == 200
    conn.close()


def test_records_cross_between_gateway_and_native_client(gateway: ServerProcess, name: str) -> None:
    kinesis = boto3.client(
        "kinesis",
        endpoint_url=gateway.kinesis_endpoint,
        region_name=REGION,
        aws_access_key_id="a",
        aws_secret_access_key="b",
    )
    payloads = [os.urandom(n) for n in (0, 1, 100, 70_000)]
    with connect(gateway.endpoint) as client:
        kinesis.create_stream(StreamName=name, ShardCount=1)
        written = kinesis.put_records(
            StreamName=name,
            Records=[{"Data": p, "PartitionKey": f"k{i}"} for i, p in enumerate(payloads)],
        )
        assert written["FailedRecordCount"] == 0
        page = client.read(name, "shardId-000000000000", Position.trim_horizon())
        assert [r.data for r in page.records] == payloads
        assert [r.sequence_number for r in page.records] == [
            r["SequenceNumber"] for r in written["Records"]
        ]
        native = client.put_record(name, b"\x00native\xfe", "n")
    it = kinesis.get_shard_iterator(
        StreamName=name,
        ShardId="shardId-000000000000",
        ShardIteratorType="AT_SEQUENCE_NUMBER",
        StartingSequenceNumber=native.sequence_number,
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=it)["Records"]
    assert [(r["Data"], r["PartitionKey"]) for r in records] == [(b"\x00native\xfe", "n")]
    kinesis.delete_stream(StreamName=name)
    kinesis.close()


def test_aws_cli(gateway: ServerProcess, name: str, tmp_path: Path) -> None:
    aws = str(Path(sys.executable).parent / "aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "cli",
        "AWS_SECRET_ACCESS_KEY": "cli",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_PAGER": "",
    }

    def cli(*args: str) -> Any:
        done = subprocess.run(
            [aws, "--endpoint-url", gateway.kinesis_endpoint, "--output", "json", "kinesis", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    cli("create-stream", "--stream-name", name, "--shard-count", "1")
    # aws CLI v1 sends --data as given (its blob arguments are raw text by default).
    put = cli("put-record", "--stream-name", name, "--partition-key", "c", "--data", "hi cli")
    assert put["ShardId"] == "shardId-000000000000"
    shards = cli("list-shards", "--stream-name", name)["Shards"]
    assert [s["ShardId"] for s in shards] == ["shardId-000000000000"]
    it = cli(
        "get-shard-iterator",
        "--stream-name",
        name,
        "--shard-id",
        "shardId-000000000000",
        "--shard-iterator-type",
        "TRIM_HORIZON",
    )["ShardIterator"]
    records = cli("get-records", "--shard-iterator", it)["Records"]
    assert [base64.b64decode(r["Data"]) for r in records] == [b"hi cli"]
    assert records[0]["SequenceNumber"] == put["SequenceNumber"]
