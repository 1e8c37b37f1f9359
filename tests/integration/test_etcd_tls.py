"""A cluster node reaching etcd over mutual TLS (``--etcd-tls-ca/-cert/-key``): a real etcd
serving https with --client-cert-auth, one real ``streamd serve --cluster`` node. The node
joins and serves; a node without the flags, or with the CA but no client certificate, is
refused at start with one clear line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from streamd.testing import ServerProcess
from streamd.testing.etcd import EtcdProcess, EtcdTls
from streamd.testing.process import free_ports
from streamd_client import Position, connect


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdTls:
    root = tmp_path_factory.mktemp("etcd-pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")  # etcd's server cert, and the node's client
    tls = EtcdTls(root / "ca.pem", root / "cert.pem", root / "key.pem")
    ca.cert_pem.write_to_path(str(tls.ca))
    tls.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tls.key))
    return tls


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory, pki: EtcdTls) -> Iterator[EtcdProcess]:
    with EtcdProcess(tmp_path_factory.mktemp("etcd-tls") / "etcd", tls=pki) as process:
        yield process


def cluster_args(etcd: EtcdProcess, node_id: str, port: int) -> list[str]:
    return ["--cluster", f"etcd://{etcd.endpoint}", "--node-id", node_id,
            "--cluster-namespace", f"{node_id}/", "--advertise", f"127.0.0.1:{port}"]  # fmt: skip


async def test_a_node_joins_and_serves_through_etcd_over_mutual_tls(
    etcd: EtcdProcess, pki: EtcdTls, tmp_path: Path
) -> None:
    port = free_ports("127.0.0.1", 1)[0]
    args = [*cluster_args(etcd, "n1", port), "--etcd-tls-ca", str(pki.ca),
            "--etcd-tls-cert", str(pki.cert), "--etcd-tls-key", str(pki.key)]  # fmt: skip
    with ServerProcess(tmp_path / "n1", port=port, extra_args=args) as node:
        async with connect(node.endpoint) as client:
            await client.create_stream("over-etcd-tls", shard_count=1)
            await client.wait_for_active("over-etcd-tls", timeout_s=20)
            put = await client.put_record("over-etcd-tls", b"v", partition_key="k")
            page = await client.read("over-etcd-tls", put.shard_id, Position.trim_horizon())
            assert [record.data for record in page.records] == [b"v"]


@pytest.mark.parametrize("flags", ["none", "ca only"])
def test_a_node_without_its_etcd_client_certificate_is_refused_at_start(
    etcd: EtcdProcess, pki: EtcdTls, tmp_path: Path, flags: str
) -> None:
    args = cluster_args(etcd, "n2", free_ports("127.0.0.1", 1)[0])
    if flags == "ca only":
        args += ["--etcd-tls-ca", str(pki.ca)]
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "serve", "--data-dir", str(tmp_path / "n2"),
         "--listen", "127.0.0.1:0", "--kinesis-listen", "off", *args],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr.decode()
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error: --cluster ") and "etcd" in last
