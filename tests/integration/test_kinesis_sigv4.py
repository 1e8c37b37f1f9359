"""SigV4 on the Kinesis gateway: a server started with credentials (a key pair on the command
line and an AWS credentials file) accepts requests signed by botocore with a right secret and
refuses a wrong secret, an unknown key and an unsigned request with the errors the SDKs expect."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess
from streamd.testing.process import ServerStartError

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def signed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("kinesis-sigv4")
    credentials = base / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = file-secret\n"
    )
    args = [
        "--kinesis-region", REGION,
        "--kinesis-access-key", "AKIDEXAMPLE",
        "--kinesis-secret-key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "--kinesis-credentials", str(credentials),
    ]  # fmt: skip
    with ServerProcess(base / "data", fsync="never", kinesis=True, extra_args=args) as process:
        yield process


def client(gateway: ServerProcess, key: str, secret: str) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=gateway.kinesis_endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def test_right_secrets_are_accepted(signed_gateway: ServerProcess) -> None:
    for key, secret in (
        ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        ("FILEKEY", "file-secret"),
    ):
        kinesis = client(signed_gateway, key, secret)
        kinesis.create_stream(StreamName=f"signed-{key}", ShardCount=1)
        put = kinesis.put_record(StreamName=f"signed-{key}", Data=b"x" * 5000, PartitionKey="k")
        assert put["ShardId"] == "shardId-000000000000"
        arn = kinesis.describe_stream_summary(StreamName=f"signed-{key}")[
            "StreamDescriptionSummary"
        ]["StreamARN"]
        assert arn.startswith(f"arn:aws:kinesis:{REGION}:")
        kinesis.close()


@pytest.mark.parametrize(
    ("key", "secret", "expected", "status"),
    [
        ("AKIDEXAMPLE", "wrong", "InvalidSignatureException", 403),
        ("NOSUCHKEY", "whatever", "UnrecognizedClientException", 400),
    ],
)
def test_bad_credentials_are_refused(
    signed_gateway: ServerProcess, key: str, secret: str, expected: str, status: int
) -> None:
    kinesis = client(signed_gateway, key, secret)
    with pytest.raises(ClientError) as exc:
        kinesis.list_streams()
    assert exc.value.response["Error"]["Code"] == expected
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    kinesis.close()


def test_wrong_region_scope_is_refused(signed_gateway: ServerProcess) -> None:
    kinesis = boto3.client(
        "kinesis",
        endpoint_url=signed_gateway.kinesis_endpoint,
        region_name="us-west-2",
        aws_access_key_id="FILEKEY",
        aws_secret_access_key="file-secret",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        kinesis.list_streams()
    assert exc.value.response["Error"]["Code"] == "InvalidSignatureException"
    kinesis.close()


def test_unsigned_request_is_refused(signed_gateway: ServerProcess) -> None:
    host, port = signed_gateway.kinesis_endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(
        "POST",
        "/",
        body=b"{}",
        headers={
            "X-Amz-Target": "Kinesis_20131202.ListStreams",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 403
    assert body["__type"] == "MissingAuthenticationTokenException"
    conn.close()


def test_credentials_file_errors_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "creds"
    bad.write_text("[default]\naws_access_key_id = only-the-id\n")
    process = ServerProcess(
        tmp_path / "data",
        kinesis=True,
        extra_args=["--kinesis-credentials", str(bad)],
        start_timeout_s=10,
    )
    try:
        with pytest.raises(ServerStartError, match="exited with 2"):
            process.start()
    finally:
        process.close()
