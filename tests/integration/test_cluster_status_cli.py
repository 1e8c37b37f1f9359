"""``streamd cluster status`` against a real etcd (the session's ``etcd`` fixture): what it
prints for a namespace holding nodes, a controller and shards (text and ``--json``), for an
empty namespace, and its refusals (etcd unreachable: exit 3; a bad URL or namespace: exit 2).

The keyspace is written here with the documents the nodes and the controller write
(``meta/keys.py``), so these tests check the command alone; test_dev_cluster_status.py checks
it against nodes that registered themselves.
"""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import structlog
import trio

from streamd.cli import app as cli
from streamd.cli import common
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.keys import (
    CLUSTER_ID_KEY,
    CONTROLLER_KEY,
    ClusterId,
    ControllerRecord,
    NodeRegistration,
    ShardAssignment,
    node_key,
    shard_key,
)
from streamd.meta.store import Compare
from streamd.testing.etcd import EtcdProcess


def populate(etcd: EtcdProcess, namespace: str) -> None:
    """Cluster c-test: n1 and n2 live (n2 controller), 4 shards: 2 on n1, 1 on n2, 1 on the
    departed n3 (unavailable)."""
    shards = [
        ShardAssignment("s", "a", 1, ("n1",), "n1", 1, "ok"),
        ShardAssignment("s", "b", 1, ("n1",), "n1", 1, "ok"),
        ShardAssignment("s", "c", 1, ("n2",), "n2", 1, "ok"),
        ShardAssignment("s", "d", 1, ("n3",), None, 1, "unavailable"),
    ]
    puts = [
        (CLUSTER_ID_KEY, ClusterId("c-test").encode()),
        (CONTROLLER_KEY, ControllerRecord("n2", 7, 0).encode()),
        *((node_key(n), NodeRegistration(n, f"127.0.0.1:707{i}", f"127.0.0.1:457{i}", 0, "0")
           .encode()) for i, n in ((1, "n1"), (2, "n2"))),
        *((shard_key(s.stream, s.shard_id), s.encode()) for s in shards),
    ]  # fmt: skip

    async def write() -> None:
        store = await EtcdMetaStore.connect([etcd.endpoint], namespace=namespace)
        try:
            assert await store.txn([Compare(CLUSTER_ID_KEY, 0)], puts)
        finally:
            await store.aclose()

    trio.run(write)


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["cluster", "status", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_shows_the_cluster_id_controller_and_per_node_liveness_addresses_and_shards(
    etcd: EtcdProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = f"status/{uuid.uuid4().hex}/"
    populate(etcd, namespace)
    url = f"etcd://{etcd.endpoint}"
    code, out, err = status(capsys, "--cluster", url, "--cluster-namespace", namespace)
    assert code == common.EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == "cluster c-test, controller n2"
    assert lines[1] == "shards: 4 (1 unavailable, 0 unassigned)"
    rows = [line.split() for line in lines[3:]]
    assert rows == [
        ["n1", "yes", "127.0.0.1:7071", "127.0.0.1:4571", "2", "2"],
        ["n2", "*", "yes", "127.0.0.1:7072", "127.0.0.1:4572", "1", "1"],
        ["n3", "NO", "1", "0"],
    ]

    code, out, _ = status(capsys, "--cluster", url, "--cluster-namespace", namespace, "--json")
    assert code == common.EXIT_OK
    doc = json.loads(out)
    assert (doc["cluster_id"], doc["controller"], doc["shards"]) == ("c-test", "n2", 4)
    assert [(n["node_id"], n["live"], n["native_address"], n["leaders"]) for n in doc["nodes"]] == [
        ("n1", True, "127.0.0.1:7071", 2),
        ("n2", True, "127.0.0.1:7072", 1),
        ("n3", False, "", 0),
    ]


def test_status_takes_the_cluster_from_the_environment(
    etcd: EtcdProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"status/{uuid.uuid4().hex}/"
    populate(etcd, namespace)
    monkeypatch.setenv("STREAMD_CLUSTER", f"etcd://{etcd.endpoint}")
    code, out, _ = status(capsys, "--cluster-namespace", namespace)
    assert code == common.EXIT_OK and out.startswith("cluster c-test,")


def test_an_empty_namespace_says_nothing_is_there_yet(
    etcd: EtcdProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = f"status/{uuid.uuid4().hex}/"
    url = f"etcd://{etcd.endpoint}"
    code, out, _ = status(capsys, "--cluster", url, "--cluster-namespace", namespace)
    assert code == common.EXIT_OK
    assert out.startswith("cluster (none yet), controller (none)\n")
    assert f"(nothing under namespace {namespace!r} in {url} yet" in out


def test_an_unreachable_etcd_is_refused_with_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = status(capsys, "--cluster", f"etcd://127.0.0.1:{port}")
    assert code == common.EXIT_UNREACHABLE and out == ""
    assert err.startswith(f"error: etcd at etcd://127.0.0.1:{port} is unreachable")
    assert "`streamd dev cluster` starts one" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, says",
    [(["--cluster", "127.0.0.1:2379"], "error: --cluster: expected etcd://HOST:PORT"),
     (["--cluster", "etcd://h:1", "--cluster-namespace", "x"], "must end in '/'")],
)  # fmt: skip
def test_a_bad_url_or_namespace_is_refused_with_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, _, err = status(capsys, *argv)
    assert code == common.EXIT_USAGE and says in err


def test_status_leaves_the_logging_configuration_as_it_was(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-process (tests, scripts), a structlog bound to this test's captured stderr would
    outlive it: later log calls would write to a closed file."""
    before = structlog.get_config()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, _ = status(capsys, "--cluster", f"etcd://127.0.0.1:{port}")
    assert code == common.EXIT_UNREACHABLE
    assert structlog.get_config() == before
