"""A bootstrap list against a real embedded server: a dead address first is skipped, and an
embedded server (no leaders named) keeps every request on the one bootstrap connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, connect

pytestmark = pytest.mark.anyio


def dead_endpoint() -> str:
    """A loopback address nothing listens on (connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_dead_first_address_is_skipped_and_nothing_is_routed(
    server: ServerProcess, stream_name: str
) -> None:
    async with connect(f"{dead_endpoint()},{server.endpoint}") as client:
        await client.create_stream(stream_name, 2)
        async with client.producer(stream_name, linger_ms=1) as producer:
            pendings = [await producer.put(b"%d" % i, f"k{i % 7}") for i in range(500)]
        with anyio.fail_after(30):
            results = [await p.result() for p in pendings]
        description = await client.describe_stream(stream_name)
        assert all(s.leader_address is None for s in description.shards)  # embedded
        read = 0
        for shard in description.shards:
            async for _ in client.reader(stream_name, shard.shard_id, Position.trim_horizon()):
                read += 1
        assert read == len(results) == 500
        assert dict(client.leader_cache) == {}
        assert client.router.stats.leader_requests == 0
        assert client.router.pool.stats.opened == 0


def test_the_cli_takes_a_bootstrap_list(server: ServerProcess, stream_name: str) -> None:
    endpoint = f"{dead_endpoint()},{server.endpoint}"
    command = [sys.executable, "-m", "streamd", "--endpoint", endpoint]
    created = subprocess.run(
        [*command, "stream", "create", stream_name, "--shards", "1"],
        capture_output=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr.decode()
    listed = subprocess.run(
        [*command, "stream", "list"], capture_output=True, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr.decode()
    assert stream_name in listed.stdout.decode().split()
