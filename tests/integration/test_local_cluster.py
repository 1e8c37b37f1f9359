"""``streamd.testing.cluster.LocalCluster``, the harness of the 3-node tests (and of ``streamd
dev cluster``): etcd and 3 node processes on free ports, per-node faults, and nothing left
(process, port, temporary directory) after ``close()``, even with a node paused."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from streamd.testing.cluster import LocalCluster


def accepts(endpoint: str) -> bool:
    host, _, port = endpoint.removeprefix("http://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return True
    except OSError:
        return False


def state(pid: int) -> str:
    """The process state letter from /proc (R, S, T, Z...), "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2 :].split()[0]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_three_nodes_on_free_ports_with_their_cluster_flags() -> None:
    with LocalCluster(3, namespace="lc-test/") as cluster:
        assert cluster.etcd.healthy()
        endpoints = [cluster.endpoint(k) for k in (1, 2, 3)]
        kinesis = [cluster.kinesis_endpoint(f"node{k}") for k in (1, 2, 3)]
        assert len(set(endpoints + kinesis)) == 6
        assert all(accepts(e) for e in endpoints + kinesis)
        assert cluster.bootstrap == ",".join(endpoints)
        assert cluster.cluster_url == f"etcd://{cluster.etcd.endpoint}"
        for node_id, node in cluster.nodes.items():
            args = cmdline(node.pid)
            flag = {name: args[i + 1] for i, name in enumerate(args[:-1]) if name.startswith("--")}
            assert flag["--cluster"] == cluster.cluster_url
            assert flag["--node-id"] == node_id
            assert flag["--cluster-namespace"] == "lc-test/"
            assert flag["--listen"] == node.endpoint
            assert flag["--data-dir"] == str(cluster.root_dir / node_id)
        assert cluster.exited() == {}
        with pytest.raises(KeyError, match="no node 'node9'"):
            cluster.node("node9")


def test_kill9_restart_sigstop_sigcont_and_a_clean_close_even_with_a_node_paused() -> None:
    cluster = LocalCluster(3)
    root = cluster.root_dir
    try:
        cluster.start()
        second = cluster.endpoint(2)
        assert cluster.kill9(2) == -9
        assert not cluster.node(2).running and not accepts(second)
        assert cluster.exited() == {}  # killed through the harness: not an unexpected exit
        cluster.restart(2)
        assert cluster.endpoint(2) == second and accepts(second)  # same port, same data dir
        assert cluster.node(2).starts == 2

        pid = cluster.node(3).pid
        cluster.sigstop(3)
        assert state(pid) == "T"
        cluster.sigcont(3)
        assert state(pid) in ("R", "S")

        cluster.sigstop(1)  # close() must get a paused node out too
        pids = [node.pid for node in cluster.nodes.values()] + [cluster.etcd.pid]
        endpoints = [cluster.endpoint(k) for k in (1, 2, 3)] + [cluster.etcd.endpoint]
    finally:
        cluster.close()
    assert all(state(pid) in ("", "Z") for pid in pids)
    assert not any(accepts(e) for e in endpoints)
    assert not root.exists()
    cluster.close()  # idempotent


def test_a_node_that_dies_by_itself_shows_in_exited_and_restarts(tmp_path: Path) -> None:
    with LocalCluster(2, root_dir=tmp_path / "c", kinesis=False) as cluster:
        endpoint = cluster.endpoint(1)
        os.kill(cluster.node(1).pid, 9)  # not through the harness: an unexpected death
        deadline = time.monotonic() + 10
        while not cluster.exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.exited() == {"node1": -9}
        cluster.restart(1)
        assert cluster.exited() == {} and accepts(endpoint)
    assert (tmp_path / "c" / "node1").is_dir()  # a given root is kept


def test_bad_port_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ports 65535\.\.65537 do not exist"):
        LocalCluster(3, base_port=65535)
    with pytest.raises(ValueError, match="at least one node"):
        LocalCluster(0)
