"""``streamd top`` against real servers: in a pseudo-terminal, as a script, and over a cluster.

The terminal tests run ``streamd top`` as a child process whose stdin, stdout and stderr are the
slave side of a pty (its controlling terminal, 40 x 150), read what it draws from the master
side, type keys into it, and compare the terminal's attributes before and after. The writes
that make a rate come from a thread with the blocking client, started after the child (no fork
with threads in flight).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from streamd.testing import ServerProcess
from streamd.testing.cluster import LocalCluster
from streamd_client import sync
from streamd_client.errors import StreamNotFoundError
from streamd_client.group import GroupWorker
from streamd_client.node_stats import node_stats
from streamd_client.results import RecordFailure

ROWS, COLUMNS = 40, 150
_CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


def top_command(endpoint: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamd", "top", "--endpoint", endpoint, *extra]


class PtyChild:
    """A child process on a pty of its own (its controlling terminal)."""

    def __init__(self, argv: list[str]) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.attributes_before = termios.tcgetattr(self.slave)
        slave = self.slave

        def controlling_tty() -> None:  # runs after setsid: the pty becomes the session's tty
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=controlling_tty,
            env={**os.environ, "TERM": "xterm-256color"},
        )
        self.output = b""

    def pump(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if ready:
            try:
                self.output += os.read(self.master, 1 << 16)
            except OSError:  # EIO: the child closed its side
                time.sleep(timeout_s)

    def text(self) -> str:
        return _CSI.sub(b"", self.output).decode(errors="replace")

    def wait_for(self, found: Callable[[str], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump(0.1)
            result = found(self.text())
            if result:
                return result
            assert self.process.poll() is None, f"top exited early: {self.text()[-2000:]}"
        raise AssertionError(f"{what} not seen in {timeout_s} s; screen: {self.text()[-3000:]}")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def exit_code(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            self.pump(0.05)
        self.pump(0.05)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        os.close(self.master)
        os.close(self.slave)


@contextmanager
def top_in_a_terminal(endpoint: str, *extra: str) -> Iterator[PtyChild]:
    child = PtyChild(top_command(endpoint, *extra))
    try:
        yield child
    finally:
        child.close()


@contextmanager
def writing(endpoint: str, stream: str) -> Iterator[None]:
    """Puts 20 records every 50 ms into ``stream`` until the block ends."""
    stop = threading.Event()
    with sync.connect(endpoint) as client:

        def write() -> None:
            while not stop.is_set():
                client.put_records(stream, [(b"r" * 40, f"k{i}") for i in range(20)])
                stop.wait(0.05)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            yield
        finally:
            stop.set()
            writer.join(10)


def put_all(client: Any, stream: str, records: list[tuple[bytes, str]]) -> None:
    """Put every record, again those that failed: a cluster's nodes may not all serve a new
    stream yet for a moment after it is ACTIVE (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while records:
        assert time.monotonic() < deadline, f"{len(records)} records never stored"
        try:
            results = client.put_records(stream, records).results
        except StreamNotFoundError:
            time.sleep(0.1)
            continue
        records = [
            r for r, done in zip(records, results, strict=True) if isinstance(done, RecordFailure)
        ]
        if records:
            time.sleep(0.1)


def test_top_in_a_terminal_shows_the_streams_and_their_rates_and_q_gives_the_terminal_back(
    server: ServerProcess, stream_name: str
) -> None:
    with sync.connect(server.endpoint) as client:
        client.create_stream(stream_name, 2)
    with top_in_a_terminal(server.endpoint, "--interval", "0.3") as top:
        with writing(server.endpoint, stream_name):
            # The stream's row: name, status, 2 shards, 24 h retention, a write rate above 0.
            row = re.compile(rf"{stream_name}\s+ACTIVE\s+2\s+24\s+([1-9][0-9.]*k?)\s")
            top.wait_for(row.search, 15, f"a write rate of {stream_name}")
            assert "shardId-000000000001" in top.text() and "Nodes (1)" in top.text()
            top.type(b"n")  # sort by name: the header says so at the next frame
            top.wait_for(lambda t: "sort: name" in t, 5, "the name order")
        top.type(b"q")
        assert top.exit_code(10) == 0
        assert top.output.endswith(b"\x1b[?1049l")  # the main screen back, last
        assert b"\x1b[?25h" in top.output  # the cursor shown again
        assert termios.tcgetattr(top.slave) == top.attributes_before  # echo and line mode back


def test_ctrl_c_in_the_terminal_ends_top_with_130_and_the_terminal_as_it_was(
    server: ServerProcess,
) -> None:
    with top_in_a_terminal(server.endpoint, "--interval", "0.3") as top:
        top.wait_for(lambda t: "Nodes (1)" in t, 15, "a first frame")
        assert termios.tcgetattr(top.slave) != top.attributes_before  # cbreak while it runs
        top.type(b"\x03")  # the terminal sends SIGINT to its foreground process group
        code = top.exit_code(10)
        assert code == 128 + signal.SIGINT, top.text()[-2000:]  # 130: interrupted (cli/common.py)
        assert top.output.endswith(b"\x1b[?1049l")
        assert termios.tcgetattr(top.slave) == top.attributes_before


def test_top_once_prints_one_frame_for_scripts_text_or_json(
    server: ServerProcess, stream_name: str
) -> None:
    with sync.connect(server.endpoint) as client:
        client.create_stream(stream_name, 1)
        client.put_records(stream_name, [(b"x", "k")] * 30)
    with writing(server.endpoint, stream_name):
        done = subprocess.run(
            top_command(server.endpoint, "--once", "--json", "--interval", "0.5"),
            capture_output=True,
            timeout=30,
        )
        text = subprocess.run(  # stdout not a terminal: --once is implied
            top_command(server.endpoint, "--interval", "0.3"), capture_output=True, timeout=30
        )
    assert done.returncode == 0, done.stderr
    frame = json.loads(done.stdout)
    stream = next(s for s in frame["streams"] if s["stream"] == stream_name)
    assert stream["open_shards"] == 1 and stream["write_records_per_s"] > 0
    (shard,) = [r for r in frame["shards"] if r["stream"] == stream_name]
    assert shard["records"] >= 30 and shard["stored_bytes"] > 0 and shard["node"] == "local"
    assert frame["nodes"][0]["state"] == "live" and frame["interval_s"] >= 0.5
    assert text.returncode == 0, text.stderr
    assert stream_name in text.stdout.decode() and b"\x1b[" not in text.stdout  # plain text


async def test_node_stats_counts_writes_and_reads_but_not_the_groups_lag_probes(
    server: ServerProcess, stream_name: str
) -> None:
    from streamd_client import connect, group_admin

    async with connect(server.endpoint) as client:
        await client.create_stream(stream_name, 1)
        await client.put_records(stream_name, [(b"abc", "k")] * 10)
        async with GroupWorker(client, stream_name, "g", read_wait_ms=100) as worker:
            async for batch in worker:
                await batch.checkpointer.checkpoint(batch.records[-1])
                break
        await client.put_records(stream_name, [(b"abc", "k")] * 5)
        before = await node_stats(client)
        for _ in range(3):  # each describe reads the shard to measure the lag
            view = await group_admin.describe_group(client, stream_name, "g")
        after = await node_stats(client)
    assert view["shards"][0]["lag_records"] == 5
    (row,) = [s for s in after.shards if s.stream == stream_name]
    (old,) = [s for s in before.shards if s.stream == stream_name]
    assert (row.high_watermark, row.incoming_records, row.outgoing_records) == (15, 15, 10)
    assert row.outgoing_records == old.outgoing_records  # the probes read nobody's records
    assert row.stored_bytes > 0 and row.is_open and after.node_id is None
    assert after.shards_held >= 1 and (after.data_dir_free_bytes or 0) > 0


def test_top_over_a_cluster_asks_every_node_and_shows_a_lost_one(tmp_path: Any) -> None:
    with LocalCluster(2, root_dir=tmp_path) as cluster:
        with sync.connect(cluster.bootstrap) as client:
            client.create_stream("orders", 4)
            client.wait_for_active("orders", 10.0)
            put_all(client, "orders", [(b"x", f"k{i}") for i in range(100)])

        def frame() -> dict[str, Any]:
            done = subprocess.run(
                top_command(cluster.endpoint(1), "--once", "--json", "--interval", "0.3"),
                capture_output=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            result: dict[str, Any] = json.loads(done.stdout)
            return result

        first = frame()  # through node1 alone: it finds node2 itself
        nodes = {n["node_id"]: n for n in first["nodes"]}
        assert {k: n["state"] for k, n in nodes.items()} == {"node1": "live", "node2": "live"}
        assert nodes["node1"]["shards_led"] + nodes["node2"]["shards_led"] == 4
        assert {r["node"] for r in first["shards"]} == {"node1", "node2"}
        # 100 records, and one offset per shard for its first leader's epoch-start batch
        assert 100 <= sum(r["records"] for r in first["shards"]) <= 104
        led_by_2 = {r["shard_id"] for r in first["shards"] if r["node"] == "node2"}
        assert led_by_2
        cluster.kill9(2)
        # RF 2 (the cluster default, capped at the 2 nodes): with node2 gone no shard has a
        # majority, so none is served until it is back; top says so rather than showing stale
        # rows: node2 unreachable (still registered) or gone, every shard "no stats" (its
        # leader as described: node2, node1 after a failover, or none).
        after = frame()
        states = {n["node_id"]: n["state"] for n in after["nodes"]}
        assert states["node1"] == "live" and states.get("node2") in {"unreachable", "down"}
        rows = {r["shard_id"]: (r["node"], r["state"]) for r in after["shards"]}
        assert set(rows) == {f"shardId-00000000000{i}" for i in range(4)}
        for shard_id in led_by_2:
            assert rows[shard_id] in {
                ("node1", "no stats"),
                ("node2", "no stats"),
                ("-", "no stats"),
            }
