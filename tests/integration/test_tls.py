"""TLS on real sockets against real ``streamd serve`` processes (trustme certificates).

Round trips over TLS through the async client, the sync facade, the CLI, boto3 (verify=CA) and
the aws CLI (--ca-bundle); refusals with clear errors: a CA that did not sign the server's
certificate, an expired certificate, a name the certificate does not hold, plaintext to a TLS
listener (both protocols; the server logs it), TLS to a plaintext listener; mutual TLS (no
client certificate refused, one from another CA refused, the right one served); a SIGHUP
certificate reload that keeps open connections and gives new ones the new certificate.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import trio
import trustme
from botocore.config import Config
from botocore.exceptions import ClientError, SSLError

from streamd.testing import ServerProcess
from streamd_client import Position, connect, sync
from streamd_client.errors import TlsHandshakeError, TlsRequiredError


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def write_pki(directory: Path, ca: trustme.CA, leaf: trustme.LeafCert, name: str) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / f"{name}-ca.pem", directory / f"{name}.pem", directory / f"{name}.key")
    ca.cert_pem.write_to_path(str(pki.ca))
    pki.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(pki.key))
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    return write_pki(tmp_path_factory.mktemp("pki"), ca, ca.issue_cert("127.0.0.1"), "server")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    args = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    with ServerProcess(
        tmp_path_factory.mktemp("tls") / "data", kinesis=True, extra_args=args
    ) as server:
        yield server


def https(server: ServerProcess) -> str:
    return server.kinesis_endpoint.replace("http://", "https://")


def boto(server: ServerProcess, verify: str | bool, url: str | None = None) -> object:
    return boto3.client(
        "kinesis",
        endpoint_url=url or https(server),
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        verify=verify,
        config=Config(retries={"max_attempts": 1}),
    )


async def test_async_client_round_trip_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    async with connect(f"tls://{tls_server.endpoint}", ca=pki.ca) as client:
        await client.create_stream("tls-async", shard_count=1)
        put = await client.put_record("tls-async", b"secret bytes", partition_key="k")
        read = await client.read("tls-async", put.shard_id, Position.trim_horizon())
        assert [record.data for record in read.records] == [b"secret bytes"]


def test_sync_cli_boto3_and_aws_cli_round_trips_over_tls(
    tls_server: ServerProcess, pki: Pki
) -> None:
    with sync.connect(f"tls://{tls_server.endpoint}", ca=pki.ca) as client:
        client.create_stream("tls-sync", shard_count=1)
        client.put_record("tls-sync", b"from sync", partition_key="k")
    cli = [sys.executable, "-m", "streamd", "--endpoint", f"tls://{tls_server.endpoint}"]
    env = dict(os.environ, STREAMD_TLS_CA=str(pki.ca))
    done = subprocess.run(
        [*cli, "read", "tls-sync"], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"from sync\n"
    kinesis = boto(tls_server, str(pki.ca))
    kinesis.put_record(StreamName="tls-sync", Data=b"from boto3", PartitionKey="k")  # type: ignore[attr-defined]
    aws = [sys.executable, "-m", "awscli", "--endpoint-url", https(tls_server)]
    aws_env = dict(
        os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )  # fmt: skip
    done = subprocess.run(
        [*aws, "--ca-bundle", str(pki.ca), "kinesis", "describe-stream-summary",
         "--stream-name", "tls-sync"],
        env=aws_env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["StreamDescriptionSummary"]["StreamName"] == "tls-sync"
    # The CLI with --tls-ca after the command, and a plain HOST:PORT: the flag turns TLS on.
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "stream", "list", "--endpoint", tls_server.endpoint,
         "--tls-ca", str(pki.ca)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and b"tls-sync" in done.stdout, done.stderr.decode()


async def test_a_wrong_ca_is_refused_clearly(tls_server: ServerProcess, tmp_path: Path) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    with pytest.raises(TlsHandshakeError, match="certificate is not trusted"):
        async with connect(f"tls://{tls_server.endpoint}", ca=tmp_path / "other.pem"):
            pass
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        boto(tls_server, str(tmp_path / "other.pem")).list_streams()  # type: ignore[attr-defined]


async def test_a_name_the_certificate_does_not_hold_is_refused(
    tls_server: ServerProcess, pki: Pki
) -> None:
    port = tls_server.endpoint.rsplit(":", 1)[1]
    with pytest.raises(TlsHandshakeError, match=r"not trusted.*[Hh]ostname mismatch"):
        async with connect(f"tls://localhost:{port}", ca=pki.ca):
            pass


async def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    past = datetime.now(UTC) - timedelta(days=2)
    expired = ca.issue_cert("127.0.0.1", not_before=past, not_after=past + timedelta(days=1))
    pki = write_pki(tmp_path, ca, expired, "expired")
    args = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    with ServerProcess(tmp_path / "data", extra_args=args) as server:
        with pytest.raises(TlsHandshakeError, match="expired"):
            async with connect(f"tls://{server.endpoint}", ca=pki.ca):
                pass


async def test_plaintext_to_a_tls_listener_is_refused_and_logged(
    tls_server: ServerProcess,
) -> None:
    with pytest.raises(TlsRequiredError, match="speaks TLS only: connect with tls://"):
        async with connect(tls_server.endpoint):
            pass
    with pytest.raises(ClientError, match=r"TLSRequiredException.*use https://"):
        boto(tls_server, False, url=tls_server.kinesis_endpoint).list_streams()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        refusals = [
            json.loads(line)
            for line in tls_server.log_path.read_text().splitlines()
            if '"tls.plaintext_refused"' in line
        ]
        if {entry["listener"] for entry in refusals} >= {"native", "kinesis"}:
            break
        await trio.sleep(0.05)
    else:
        raise AssertionError(f"no plaintext refusal logged for both listeners: {refusals}")


async def test_tls_to_a_plaintext_listener_is_refused_clearly(
    fresh_server: ServerProcess, pki: Pki
) -> None:
    with pytest.raises(TlsHandshakeError, match="is the server listening with TLS"):
        async with connect(f"tls://{fresh_server.endpoint}", ca=pki.ca, connect_timeout_s=5):
            pass


async def test_mutual_tls_requires_a_client_certificate_of_the_client_ca(
    tmp_path: Path, pki: Pki
) -> None:
    clients = trustme.CA()
    good = write_pki(tmp_path, clients, clients.issue_cert("client-1"), "client")
    strangers = trustme.CA()
    bad = write_pki(tmp_path, strangers, strangers.issue_cert("client-2"), "stranger")
    args = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
            "--tls-client-ca", str(good.ca)]  # fmt: skip
    with ServerProcess(tmp_path / "data", extra_args=args) as server:
        url = f"tls://{server.endpoint}"
        for cert, key in ((None, None), (bad.cert, bad.key)):
            with pytest.raises(TlsHandshakeError):
                async with connect(url, ca=pki.ca, cert=cert, key=key) as client:
                    await client.list_streams()  # TLS 1.3: the refusal comes after the handshake
        async with connect(url, ca=pki.ca, cert=good.cert, key=good.key) as client:
            assert await client.list_streams() == []


async def test_sighup_reloads_the_certificate_without_dropping_connections(
    tmp_path: Path,
) -> None:
    first_ca, second_ca = trustme.CA(), trustme.CA()
    first = write_pki(tmp_path / "a", first_ca, first_ca.issue_cert("127.0.0.1"), "server")
    second = write_pki(tmp_path / "b", second_ca, second_ca.issue_cert("127.0.0.1"), "server")
    live = tmp_path / "live"
    live.mkdir()
    (live / "cert.pem").write_bytes(first.cert.read_bytes())
    (live / "key.pem").write_bytes(first.key.read_bytes())
    args = ["--tls-cert", str(live / "cert.pem"), "--tls-key", str(live / "key.pem")]
    with ServerProcess(tmp_path / "data", extra_args=args) as server:
        url = f"tls://{server.endpoint}"
        async with connect(url, ca=first.ca) as old:
            await old.create_stream("reload", shard_count=1)
            (live / "cert.pem").write_bytes(second.cert.read_bytes())
            (live / "key.pem").write_bytes(second.key.read_bytes())
            os.kill(server.pid, signal.SIGHUP)
            deadline = time.monotonic() + 5
            while '"tls.reloaded"' not in server.log_path.read_text():
                assert time.monotonic() < deadline, "no tls.reloaded in the log"
                await trio.sleep(0.05)
            connection = await old.connection()
            await old.put_record("reload", b"still here", partition_key="k")
            assert await old.connection() is connection  # the same TLS connection, not dropped
            async with connect(url, ca=second.ca) as new:
                assert await new.list_streams() == ["reload"]
            with pytest.raises(TlsHandshakeError):
                async with connect(url, ca=first.ca):
                    pass


def test_the_standard_library_context_verifies_names_by_default() -> None:
    from streamd_client.security import client_context

    context = client_context()
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_dev_certs_serve_tls_and_mutual_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    done = subprocess.run(  # noqa: ASYNC221 (a short CLI run before any server exists)
        [sys.executable, "-m", "streamd", "dev", "certs", str(certs)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    for key in ("ca.key", "server.key", "client.key"):
        assert (certs / key).stat().st_mode & 0o077 == 0
    again = subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "streamd", "dev", "certs", str(certs)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 2 and b"already holds" in again.stderr  # never overwritten
    args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
            "--tls-client-ca", str(certs / "ca.pem")]  # fmt: skip
    with ServerProcess(tmp_path / "data", extra_args=args) as server:
        port = server.endpoint.rsplit(":", 1)[1]
        async with connect(
            f"tls://localhost:{port}",
            ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key",
        ) as client:  # fmt: skip
            assert await client.list_streams() == []
