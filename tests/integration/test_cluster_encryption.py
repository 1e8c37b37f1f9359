"""Encryption at rest on a replicated stream (three real nodes, etcd, replication factor 3).

The leader seals the stored batch it makes, so every replica's log holds the same ciphertext
(byte-identical replica batches) and none holds the plaintext; a client reading through any
node gets plaintext back.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from streamd.storage import at_rest
from streamd.testing.cluster import LocalCluster
from streamd_client import connect

from .test_cluster_replicated import (
    put_until_acked,
    read_all,
    replica_batches,
    stream_name,
    wait_served,
)

KEY = "alias/orders"
SHARD_0 = "shardId-000000000000"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("rf3enc")
    keyring = root / "keyring.json"
    keyring.write_text(json.dumps({KEY: [base64.b64encode(b"\x07" * 32).decode()]}))
    os.chmod(keyring, 0o600)
    with LocalCluster(3, root_dir=root / "nodes", extra_args=["--keyring", str(keyring)]) as c:
        yield c


def stored_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.rglob("*.log"))


async def test_replicas_store_the_same_ciphertext_and_readers_get_plaintext(
    cluster: LocalCluster,
) -> None:
    name = stream_name("enc")
    async with connect(cluster.endpoint(1)) as client:
        await client.create_stream(name, 1, replication_factor=3)
        await wait_served(client, name, 1)
        await client.set_encryption(name, KEY)
        for n in range(10):
            await put_until_acked(client, name, f"k{n}", f"PLAINTEXT-SECRET-{n:03d}".encode())
    for node in (1, 2, 3):
        found = await read_all(cluster.endpoint(node), name, [SHARD_0])
        assert [row[2] for row in found[SHARD_0]] == [
            f"PLAINTEXT-SECRET-{n:03d}".encode() for n in range(10)
        ]
    await trio.sleep(0.5)  # followers have fsynced what the leader committed
    logs = [replica_batches(node.data_dir, SHARD_0) for node in cluster.nodes.values()]
    data = [[b for b in log if not b[2]] for log in logs]  # control batches aside
    assert len(data[0]) == 10 and data[0] == data[1] == data[2]
    assert all(at_rest.is_sealed(payload) for _, _, _, payload in data[0])
    for node in cluster.nodes.values():
        assert b"PLAINTEXT-SECRET" not in stored_bytes(node.data_dir)
