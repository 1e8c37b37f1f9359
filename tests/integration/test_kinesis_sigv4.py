"""SigV4 on the Kinesis gateway: a server started with credentials (a key id on the command
line with its secret in the environment, and an AWS credentials file) accepts requests signed by
botocore and the aws CLI with a right secret, and refuses a wrong secret, an unknown key, an
unsigned request, a captured request re-aimed at another operation or given another body, with
the errors the SDKs expect. A secret on the command line is refused at start."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from streamd.testing import ServerProcess
from streamd.testing.process import ServerStartError

from .aws import kinesis_client

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
        "--kinesis-credentials", str(credentials),
    ]  # fmt: skip
    env = {"STREAMD_KINESIS_SECRET_KEY": SECRET}
    with ServerProcess(
        base / "data", fsync="never", kinesis=True, extra_args=args, env=env
    ) as process:
        yield process


SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_right_secrets_are_accepted(signed_gateway: ServerProcess) -> None:
    for key, secret in (
        ("AKIDEXAMPLE", SECRET),
        ("FILEKEY", "file-secret"),
    ):
        kinesis = kinesis_client(signed_gateway, key=key, secret=secret, region=REGION)
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
    kinesis = kinesis_client(signed_gateway, key=key, secret=secret, region=REGION)
    with pytest.raises(ClientError) as exc:
        kinesis.list_streams()
    assert exc.value.response["Error"]["Code"] == expected
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    kinesis.close()


def test_wrong_region_scope_is_refused(signed_gateway: ServerProcess) -> None:
    kinesis = kinesis_client(
        signed_gateway, key="FILEKEY", secret="file-secret", region="us-west-2"
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


def test_the_aws_cli_still_works_signed(signed_gateway: ServerProcess) -> None:
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    base = [sys.executable, "-m", "awscli", "--endpoint-url", signed_gateway.kinesis_endpoint]
    for command in (
        ["kinesis", "create-stream", "--stream-name", "cli-signed", "--shard-count", "1"],
        ["kinesis", "put-record", "--stream-name", "cli-signed", "--partition-key", "k",
         "--data", "hello"],
    ):  # fmt: skip
        done = subprocess.run(
            base + command, env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
        )
        assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["ShardId"] == "shardId-000000000000"


def send_raw(gateway: ServerProcess, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    host, port = gateway.kinesis_endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def captured_put_record(gateway: ServerProcess, stream: str) -> tuple[dict[str, str], bytes]:
    """A PutRecord signed exactly as botocore signs it (what an eavesdropper could capture)."""
    body = json.dumps({"StreamName": stream, "Data": "eA==", "PartitionKey": "k"}).encode()
    request = AWSRequest(
        method="POST",
        url=gateway.kinesis_endpoint + "/",
        data=body,
        headers={
            "X-Amz-Target": "Kinesis_20131202.PutRecord",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    SigV4Auth(Credentials("FILEKEY", "file-secret"), "kinesis", REGION).add_auth(request)
    return dict(request.headers.items()), body


def test_a_captured_put_record_cannot_be_replayed_as_another_request(
    signed_gateway: ServerProcess,
) -> None:
    kinesis = kinesis_client(signed_gateway, key="FILEKEY", secret="file-secret", region=REGION)
    kinesis.create_stream(StreamName="victim", ShardCount=1)
    headers, body = captured_put_record(signed_gateway, "victim")
    status, answer = send_raw(signed_gateway, headers, body)
    assert status == 200 and answer["ShardId"] == "shardId-000000000000"

    as_delete = dict(headers, **{"X-Amz-Target": "Kinesis_20131202.DeleteStream"})
    status, answer = send_raw(
        signed_gateway, as_delete, json.dumps({"StreamName": "victim"}).encode()
    )
    assert (status, answer["__type"]) == (403, "InvalidSignatureException")

    swapped = json.dumps({"StreamName": "victim", "Data": "ZXZpbA==", "PartitionKey": "k"})
    unsigned = dict(headers, **{"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    for forged in (headers, unsigned):
        status, answer = send_raw(signed_gateway, forged, swapped.encode())
        assert answer["__type"] == "InvalidSignatureException", answer
        assert status in (400, 403)

    six_minutes_ago = datetime.now(UTC) - timedelta(minutes=6)
    with mock.patch("botocore.auth.get_current_datetime", return_value=six_minutes_ago):
        old, body = captured_put_record(signed_gateway, "victim")
    status, answer = send_raw(signed_gateway, old, body)
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert answer["message"].startswith("Signature expired")

    records = kinesis.get_records(
        ShardIterator=kinesis.get_shard_iterator(
            StreamName="victim", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
    )["Records"]
    assert [r["Data"] for r in records] == [b"x"]  # the stream is there; nothing forged landed
    kinesis.close()


def test_a_secret_on_the_command_line_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--kinesis-listen", "127.0.0.1:0",
         "--kinesis-access-key", "K", "--kinesis-secret-key", "S"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"STREAMD_KINESIS_SECRET_KEY" in done.stderr
    env = {k: v for k, v in os.environ.items() if k != "STREAMD_KINESIS_SECRET_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--kinesis-listen", "127.0.0.1:0",
         "--kinesis-access-key", "K"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"STREAMD_KINESIS_SECRET_KEY" in done.stderr
