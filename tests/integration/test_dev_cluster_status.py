"""``streamd cluster status`` against a running ``streamd dev cluster --nodes 3``: the three
nodes registered themselves (``nodes/<id>`` under their leases), one of them is the controller,
and the status shows each live with the addresses the dev cluster printed; a 12-shard stream
created through node1 shows as 4 replicas and 4 leaders on each node.

Both commands run as real processes, exactly as README's tour runs them. This needs the node
wiring of cluster mode (``serve --cluster`` joining, registering and campaigning: node.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .test_dev_cluster import (
    READY_LINE,
    READY_S_MAX,
    children,
    dev_cluster,
    gone,
    parse_printout,
    read_until,
    wait_stopped,
)

CONTROLLER_S_MAX = 15.0


def cluster_status(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamd", "cluster", "status", "--cluster", url, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )


def test_cluster_status_shows_the_dev_cluster_s_three_nodes_live_with_a_controller(
    tmp_path: Path,
) -> None:
    with dev_cluster(tmp_path / "cluster") as process:
        printout = read_until(process, READY_LINE, READY_S_MAX)
        assert READY_LINE in printout, printout
        (etcd_host, etcd_port), nodes = parse_printout(printout)
        url = f"etcd://{etcd_host}:{etcd_port}"
        deadline = time.monotonic() + CONTROLLER_S_MAX
        while True:  # the nodes registered before they printed ready; an election may lag
            doc = json.loads(cluster_status(url, "--json").stdout or "{}")
            if doc.get("controller") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert doc.get("cluster_id"), doc
        assert doc["controller"] in nodes, doc
        assert [
            (n["node_id"], n["live"], n["native_address"], n["kinesis_address"])
            for n in doc["nodes"]
        ] == [
            (node_id, True, f"{host}:{native}", f"127.0.0.1:{kinesis}")
            for node_id, (host, native, kinesis) in sorted(nodes.items())
        ]

        text = cluster_status(url)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0] == f"cluster {doc['cluster_id']}, controller {doc['controller']}"
        rows = {line.split()[0]: line for line in lines[3:]}
        assert sorted(rows) == sorted(nodes)
        for node_id, (host, native, kinesis) in nodes.items():
            assert " yes " in rows[node_id] and f"{host}:{native}" in rows[node_id]
            assert f"127.0.0.1:{kinesis}" in rows[node_id]
        assert ("*" in rows[doc["controller"]]) and sum("*" in r for r in rows.values()) == 1

        # A 12-shard stream made through node1: every node holds a replica of each (the
        # cluster default replication factor is 3) and leads 4.
        first = f"{nodes['node1'][0]}:{nodes['node1'][1]}"
        made = subprocess.run(
            [sys.executable, "-m", "streamd", "--endpoint", first, "stream", "create", "demo",
             "--shards", "12"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        deadline = time.monotonic() + CONTROLLER_S_MAX
        while True:
            doc = json.loads(cluster_status(url, "--json").stdout)
            if doc["shards"] == 12 and doc["shards_unassigned"] == 0:
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
        assert [(n["replicas"], n["leaders"]) for n in doc["nodes"]] == [(12, 4)] * 3, doc
        text = cluster_status(url).stdout
        assert "shards: 12 (0 unavailable, 0 unassigned)" in text
        assert all(line.split()[-2:] == ["12", "4"] for line in text.splitlines()[3:]), text

        kids = children(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        code, _, err = wait_stopped(process)
    assert code == 0, err
    assert all(gone(pid) for pid in kids)
