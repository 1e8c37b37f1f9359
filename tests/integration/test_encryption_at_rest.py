"""Encryption at rest against a real server: a stream's batches sealed with AES-256-GCM.

Checked: the segment files of an encrypted stream hold none of the plaintext; readers get it
back byte-exact, after a restart and after a key rotation (a new key version, SIGHUP); a
flipped byte inside a sealed batch is a typed CORRUPT_DATA error, never served, and the other
batches stay readable; stopping encryption leaves old batches readable and stores new ones as
plaintext.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, connect, errors
from streamd_client import batch as batchfmt

pytestmark = pytest.mark.anyio

SHARD_0 = "shardId-000000000000"
KEY = "alias/orders"


def write_keyring(path: Path, versions: int) -> None:
    keys = [base64.b64encode(bytes([v]) * 32).decode() for v in range(1, versions + 1)]
    path.write_text(json.dumps({KEY: keys}))
    os.chmod(path, 0o600)


def segment_bytes(server: ServerProcess, stream: str) -> bytes:
    return b"".join(
        p.read_bytes() for p in sorted(server.stream_dir(stream).glob("shardId-*/*.log"))
    )


async def read_all(endpoint: str, stream: str) -> list[bytes]:
    async with connect(endpoint) as client:
        return [r.data async for r in client.reader(stream, SHARD_0)]


def marker(n: int) -> bytes:
    return f"PLAINTEXT-SECRET-{n:06d}-".encode() * 4


async def put(endpoint: str, stream: str, numbers: range) -> None:
    async with connect(endpoint) as client:
        for n in numbers:
            await client.put_record(stream, marker(n), f"k{n}")


async def test_sealed_stream_survives_restart_rotation_and_stop(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.json"
    write_keyring(keyring, 1)
    with ServerProcess(tmp_path / "data", extra_args=["--keyring", str(keyring)]) as server:
        async with connect(server.endpoint) as client:
            await client.create_stream("enc", 1)
            with pytest.raises(errors.InvalidArgumentError):
                await client.set_encryption("enc", "alias/missing")
            await client.set_encryption("enc", KEY)
            described = await client.call("describe_stream", {"stream": "enc"})
            assert described["stream"]["encryption_type"] == "KMS"
            assert described["stream"]["key_id"] == KEY
        await put(server.endpoint, "enc", range(0, 20))
        stored = segment_bytes(server, "enc")
        assert b"PLAINTEXT-SECRET" not in stored and len(stored) > 20 * 64
        assert await read_all(server.endpoint, "enc") == [marker(n) for n in range(20)]

        server.terminate()
        server.restart()
        assert await read_all(server.endpoint, "enc") == [marker(n) for n in range(20)]

        write_keyring(keyring, 2)  # rotation: a new current version; version 1 stays
        server.stop_signal(signal.SIGHUP)
        await anyio.sleep(0.5)
        await put(server.endpoint, "enc", range(20, 30))
        assert b"PLAINTEXT-SECRET" not in segment_bytes(server, "enc")
        server.terminate()
        server.restart()
        assert await read_all(server.endpoint, "enc") == [marker(n) for n in range(30)]

        async with connect(server.endpoint) as client:
            await client.set_encryption("enc", None)
        await put(server.endpoint, "enc", range(30, 35))
        stored = segment_bytes(server, "enc")
        assert b"PLAINTEXT-SECRET-000030-" in stored and b"SECRET-000029" not in stored
        assert await read_all(server.endpoint, "enc") == [marker(n) for n in range(35)]


def keyring_server(tmp_path: Path) -> ServerProcess:
    keyring = tmp_path / "keyring.json"
    write_keyring(keyring, 1)
    return ServerProcess(tmp_path / "data", extra_args=["--keyring", str(keyring)])


async def seal_three_records(server: ServerProcess) -> None:
    """Stream "enc" encrypted, holding records 0..2; then the server is terminated."""
    async with connect(server.endpoint) as client:
        await client.create_stream("enc", 1)
        await client.set_encryption("enc", KEY)
    await put(server.endpoint, "enc", range(0, 3))
    server.terminate()


async def test_a_node_without_the_keyring_refuses_writes_and_stores_no_plaintext(
    tmp_path: Path,
) -> None:
    with keyring_server(tmp_path) as server:
        await seal_three_records(server)
        server.extra_args = []  # restarted without --keyring: the stream is still encrypted
        server.restart()
        with pytest.raises(errors.InternalError, match="no --keyring"):
            await put(server.endpoint, "enc", range(3, 4))
        assert b"PLAINTEXT-SECRET" not in segment_bytes(server, "enc")
        with pytest.raises(errors.CorruptDataError):
            await read_all(server.endpoint, "enc")


async def test_flipped_byte_in_a_sealed_batch_is_never_served(tmp_path: Path) -> None:
    with keyring_server(tmp_path) as server:
        await seal_three_records(server)
        (segment,) = sorted(server.stream_dir("enc").glob("shardId-*/*.log"))
        data = bytearray(segment.read_bytes())
        first = batchfmt.parse_header(data)
        assert first.codec & batchfmt.CODEC_ENCRYPTED
        second_at = first.length
        second = batchfmt.parse_header(data, second_at)
        data[second_at + second.length - 5] ^= 0x01  # inside the ciphertext's tag
        segment.write_bytes(bytes(data))
        server.restart()
        async with connect(server.endpoint) as client:
            first_read = await client.read("enc", SHARD_0, Position.at_offset(0), limit=1)
            assert [r.data for r in first_read.records] == [marker(0)]
            with pytest.raises(errors.CorruptDataError) as caught:
                await client.read("enc", SHARD_0, Position.at_offset(1))
            assert b"PLAINTEXT" not in str(caught.value).encode()
            third = await client.read("enc", SHARD_0, Position.at_offset(2))
            assert [r.data for r in third.records] == [marker(2)]


def test_boto3_start_and_stop_stream_encryption(tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    from .aws import kinesis_client

    keyring = tmp_path / "keyring.json"
    write_keyring(keyring, 1)
    with ServerProcess(
        tmp_path / "data", kinesis=True, extra_args=["--keyring", str(keyring)]
    ) as server:
        kinesis = kinesis_client(server)
        try:
            kinesis.create_stream(StreamName="enc", ShardCount=1)
            described = kinesis.describe_stream(StreamName="enc")["StreamDescription"]
            assert described["EncryptionType"] == "NONE" and "KeyId" not in described
            with pytest.raises(ClientError) as caught:
                kinesis.start_stream_encryption(
                    StreamName="enc", EncryptionType="KMS", KeyId="alias/missing"
                )
            assert caught.value.response["Error"]["Code"] == "InvalidArgumentException"
            arn = "arn:aws:kms:us-east-1:123456789012:" + KEY
            kinesis.start_stream_encryption(StreamName="enc", EncryptionType="KMS", KeyId=arn)
            described = kinesis.describe_stream(StreamName="enc")["StreamDescription"]
            assert (described["EncryptionType"], described["KeyId"]) == ("KMS", arn)
            summary = kinesis.describe_stream_summary(StreamName="enc")
            assert summary["StreamDescriptionSummary"]["EncryptionType"] == "KMS"
            put = kinesis.put_record(StreamName="enc", Data=marker(1), PartitionKey="k")
            assert put["EncryptionType"] == "KMS"
            assert b"PLAINTEXT-SECRET" not in segment_bytes(server, "enc")
            iterator = kinesis.get_shard_iterator(
                StreamName="enc", ShardId=SHARD_0, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            records = kinesis.get_records(ShardIterator=iterator)["Records"]
            assert [(r["Data"], r["EncryptionType"]) for r in records] == [(marker(1), "KMS")]

            kinesis.stop_stream_encryption(StreamName="enc", EncryptionType="KMS", KeyId=arn)
            described = kinesis.describe_stream(StreamName="enc")["StreamDescription"]
            assert described["EncryptionType"] == "NONE"
            put = kinesis.put_records(
                StreamName="enc", Records=[{"Data": marker(2), "PartitionKey": "k"}]
            )
            assert put["EncryptionType"] == "NONE"
            records = kinesis.get_records(ShardIterator=iterator)["Records"]
            assert [r["Data"] for r in records] == [marker(1), marker(2)]
            assert b"PLAINTEXT-SECRET-" in segment_bytes(server, "enc")  # the new batch only
        finally:
            kinesis.close()


def test_cli_encrypt_describe_decrypt(tmp_path: Path) -> None:
    from .test_cli_end_to_end import ok, streamd

    keyring = tmp_path / "keyring.json"
    write_keyring(keyring, 1)
    with ServerProcess(tmp_path / "data", extra_args=["--keyring", str(keyring)]) as server:
        ok(streamd(server, "stream", "create", "enc", "--shards", "1"))
        refused = streamd(server, "stream", "encrypt", "enc", "--key-id", "alias/missing")
        assert refused.returncode != 0 and b"alias/missing" in refused.stderr
        assert "with key alias/orders" in ok(
            streamd(server, "stream", "encrypt", "enc", "--key-id", KEY)
        )
        assert "KMS (key alias/orders)" in ok(streamd(server, "stream", "describe", "enc"))
        document = json.loads(ok(streamd(server, "stream", "describe", "enc", "--json")))
        assert document["encryption_key_id"] == KEY
        ok(streamd(server, "put", "enc", "--partition-key", "k", stdin=b"PLAINTEXT-SECRET-cli\n"))
        assert b"PLAINTEXT-SECRET" not in segment_bytes(server, "enc")
        ok(streamd(server, "stream", "decrypt", "enc"))
        assert "encryption       NONE" in ok(streamd(server, "stream", "describe", "enc"))
