"""``streamd dev cluster`` as a real process: etcd and 3 nodes up, where they are printed, and
nothing left behind after Ctrl-C, SIGTERM, a child's death or a start that fails.

Each test runs ``python -m streamd dev cluster --nodes 3`` in a session of its own with free
ports (``--base-port 0`` etc.), reads its stdout up to ``streamd dev cluster ready: 3 node(s)``,
finds its children in /proc, and checks after the stop that each of them is gone and each port
closed. Ctrl-C is sent as a terminal sends it: SIGINT to the whole process group.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamd.testing.etcd import etcd_binary

READY_S_MAX = 90.0
STOP_S_MAX = 40.0
READY_LINE = "streamd dev cluster ready: 3 node(s)"
NODE_RE = re.compile(r"^(node\d+)\s+native (\S+):(\d+)\s+kinesis http://(\S+):(\d+)\s")
ETCD_RE = re.compile(r"^etcd\s+etcd://(\S+):(\d+)\s")


def dev_cluster_command(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "streamd", "dev", "cluster", "--nodes", "3", "--dir", str(root),
        "--base-port", "0", "--kinesis-base-port", "0", "--etcd-port", "0", *extra,
    ]  # fmt: skip


def read_until(process: subprocess.Popen[bytes], line: str, timeout_s: float) -> str:
    """stdout up to and including ``line`` (or all of it if the process ends first)."""
    assert process.stdout is not None
    buffered = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while line.encode() + b"\n" not in buffered and time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffered += chunk
    return buffered.decode(errors="replace")


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` (from /proc): pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def gone(pid: int) -> bool:
    """True if ``pid`` no longer exists (or is a zombie nobody reaps yet: it holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


@contextmanager
def dev_cluster(root: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """The ``dev cluster`` process in its own session; killed (its group) if a test fails."""
    etcd_binary()  # no etcd: fail here with how to install it
    process = subprocess.Popen(
        dev_cluster_command(root, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            with_children = [process.pid, *children(process.pid)]
            for pid in with_children:
                with_signal(pid, signal.SIGKILL)
            process.wait(timeout=STOP_S_MAX)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def with_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def parse_printout(text: str) -> tuple[tuple[str, int], dict[str, tuple[str, int, int]]]:
    etcd = next(m for line in text.splitlines() if (m := ETCD_RE.match(line)))
    nodes = {
        m.group(1): (m.group(2), int(m.group(3)), int(m.group(5)))
        for line in text.splitlines()
        if (m := NODE_RE.match(line))
    }
    return (etcd.group(1), int(etcd.group(2))), nodes


def wait_stopped(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=STOP_S_MAX)
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_dev_cluster_starts_etcd_and_3_nodes_says_where_and_a_signal_stops_every_child(
    tmp_path: Path, how: str
) -> None:
    root = tmp_path / "cluster"
    with dev_cluster(root) as process:
        printout = read_until(process, READY_LINE, READY_S_MAX)
        assert READY_LINE in printout, printout
        (etcd_host, etcd_port), nodes = parse_printout(printout)
        assert sorted(nodes) == ["node1", "node2", "node3"]
        url = f"etcd://{etcd_host}:{etcd_port}"
        natives = [f"{host}:{native}" for host, native, _ in nodes.values()]
        assert f"streamd cluster status --cluster {url}" in printout
        assert f"streamd --endpoint {natives[0]},{natives[1]} " in printout
        assert f'endpoint_url="http://127.0.0.1:{nodes["node1"][2]}"' in printout  # boto3
        assert f"aws --endpoint-url http://127.0.0.1:{nodes['node1'][2]} " in printout
        ports = [etcd_port, *(p for _, n, k in nodes.values() for p in (n, k))]
        assert len(set(ports)) == 7
        assert all(accepts("127.0.0.1", port) for port in ports)
        kids = children(process.pid)
        assert len(kids) == 4, kids
        etcd = [cmd for cmd in kids.values() if cmd.split()[0].endswith("etcd")]
        assert len(etcd) == 1 and f"{root / 'etcd'}" in etcd[0], kids
        serve = [cmd for cmd in kids.values() if " -m streamd serve " in cmd]
        assert len(serve) == 3, kids
        for node_id in nodes:
            wanted = (f"--node-id {node_id} ", f"--data-dir {root / node_id} ", f"--cluster {url} ")
            assert any(all(w in cmd for w in wanted) for cmd in serve), (node_id, serve)
        assert (root / "etcd").is_dir() and all((root / n).is_dir() for n in nodes)

        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to its foreground group
        else:
            os.kill(process.pid, signal.SIGTERM)
        code, out, err = wait_stopped(process)
    assert code == 0, err
    assert "stopping the nodes, then etcd" in out and out.rstrip().endswith("stopped")
    assert "Traceback" not in err
    assert all(gone(pid) for pid in kids), {pid: kids[pid] for pid in kids if not gone(pid)}
    assert not any(accepts("127.0.0.1", port) for port in ports)


def test_a_child_that_dies_is_named_and_the_rest_stopped(tmp_path: Path) -> None:
    with dev_cluster(tmp_path / "cluster") as process:
        printout = read_until(process, READY_LINE, READY_S_MAX)
        assert READY_LINE in printout
        kids = children(process.pid)
        victim = next(pid for pid, cmd in kids.items() if "--node-id node2 " in cmd)
        os.kill(victim, signal.SIGKILL)
        code, _, err = wait_stopped(process)
    assert code == 1
    assert "error: node2 exited with status -9; stopping the rest" in err
    assert "node2.server.log" in err
    assert all(gone(pid) for pid in kids)


def test_a_taken_node_port_is_refused_with_the_flag_and_nothing_is_left(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with dev_cluster(tmp_path / "cluster", "--base-port", str(port)) as process:
            code, _, err = wait_stopped(process)
            assert not children(process.pid)
    assert code == 2, err
    assert f"error: node1 did not start: --listen 127.0.0.1:{port}: address already in use" in err
    assert "(node ports come from --base-port and --kinesis-base-port)" in err
    assert "Traceback" not in err


def test_a_taken_etcd_port_is_refused_with_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with dev_cluster(tmp_path / "cluster", "--etcd-port", str(port)) as process:
            code, _, err = wait_stopped(process)
    assert code == 2, err
    assert f"error: etcd: port {port} or {port + 1} is in use" in err
    assert "choose another with --etcd-port PORT" in err and "Traceback" not in err
