"""Three real ``streamd serve --cluster`` nodes on one real etcd, over real TCP (issue 11).

One ``LocalCluster`` (etcd + node1..node3, ``streamd.testing.cluster``) is shared by the module:
a cluster start costs seconds, and the tests below either leave it as they found it (the kill
tests restart what they killed) or run last. Each test uses streams of its own.

What is checked:

* placement: a 12-shard stream spreads 4/4/4, as describe's ``leader`` per shard says;
* records put through node 1 (native server-routed ``put_records``, the Producer, boto3
  PutRecords) read back byte-exact with the same sequence numbers through nodes 2 and 3 (the
  native client bootstrapped from that node only, boto3 GetRecords, the aws CLI);
* a stream created through node 2 takes writes through node 3 once ``wait_for_active`` returns;
* kill -9 of a node: its shards answer SHARD_UNAVAILABLE (native code; Kinesis 503 and the
  per-record InternalFailure), the other shards take writes; restarted, it serves every
  acknowledged record again;
* kill -9 of the controller's node: another node holds ``controller/active`` within 5 s, and
  create/delete work from the survivors.

The refusals at start (an unreachable etcd, something that is not etcd, a duplicate node id,
another cluster's id, another cluster's data dir) are separate ``streamd serve`` processes
against the same etcd: each must exit nonzero with one clear line.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.server
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError

from streamd.meta import etcd_codec
from streamd.meta.keys import CONTROLLER_KEY, ControllerRecord
from streamd.testing.cluster import LocalCluster
from streamd.testing.process import free_ports
from streamd_client import Client, Position, connect
from streamd_client.errors import ShardUnavailableError
from streamd_client.results import PutResult, RecordFailure

from .aws import kinesis_client

SHARDS = 12
NODES = ("node1", "node2", "node3")
PLACE_TIMEOUT_S = 15.0
UNAVAILABLE_TIMEOUT_S = 20.0
CONTROLLER_FAILOVER_S_MAX = 5.0
SERVE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(3, root_dir=tmp_path_factory.mktemp("cluster3")) as running:
        yield running


def stream_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def payload(rng: random.Random, index: int) -> bytes:
    """Bytes that a text round trip would damage: NULs, high bytes, no valid UTF-8."""
    return b"\x00\xff" + index.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 200))


# -- etcd, describe ------------------------------------------------------------------------------


def etcd_get(cluster: LocalCluster, key: str) -> bytes | None:
    raw_key = (cluster.namespace + key).encode()
    request = urllib.request.Request(
        f"{cluster.etcd.url}/v3/kv/range",
        data=etcd_codec.range_request(raw_key, None),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=2.0) as answer:
        kvs = etcd_codec.decode_range(answer.read()).kvs
    return kvs[0].value if kvs else None


def controller_of(cluster: LocalCluster) -> str | None:
    raw = etcd_get(cluster, CONTROLLER_KEY)
    return None if raw is None else ControllerRecord.decode(raw).node_id


async def shard_leaders(client: Client, stream: str) -> dict[str, str | None]:
    """shard id -> leader node id, from describe (cluster mode names each shard's leader)."""
    answer = await client.call("describe_stream", {"stream": stream})
    return {shard["shard_id"]: shard.get("leader") for shard in answer["stream"]["shards"]}


async def wait_placed(client: Client, stream: str, nodes: set[str]) -> dict[str, str]:
    """Wait until every shard has a leader among ``nodes``; returns shard -> leader."""
    with trio.fail_after(PLACE_TIMEOUT_S):
        while True:
            leaders = await shard_leaders(client, stream)
            if all(leader in nodes for leader in leaders.values()):
                return {shard: str(leader) for shard, leader in leaders.items()}
            await trio.sleep(0.05)


# -- reading everything back ---------------------------------------------------------------------

Stored = tuple[str, str, bytes]  # (sequence number, partition key, data)


def by_shard(results: list[tuple[PutResult, str, bytes]]) -> dict[str, list[Stored]]:
    shards: dict[str, list[Stored]] = collections.defaultdict(list)
    for result, key, data in results:
        shards[result.shard_id].append((result.sequence_number, key, data))
    return {shard: sorted(rows, key=lambda row: int(row[0])) for shard, rows in shards.items()}


async def native_read_all(
    endpoint: str, stream: str, shard_ids: list[str]
) -> dict[str, list[Stored]]:
    """Every record of each shard, through a native client bootstrapped from ``endpoint`` only
    (the client goes to each shard's leader by itself)."""
    found: dict[str, list[Stored]] = {}
    async with connect(endpoint) as client:
        for shard_id in shard_ids:
            rows: list[Stored] = []
            position = Position.trim_horizon()
            while True:
                page = await client.read(stream, shard_id, position)
                rows += [(r.sequence_number, r.partition_key, r.data) for r in page.records]
                if not page.records:
                    break
                position = page.next_position
            found[shard_id] = rows
    return found


def boto3_read_all(kinesis: Any, stream: str, shard_ids: list[str]) -> dict[str, list[Stored]]:
    found: dict[str, list[Stored]] = {}
    for shard_id in shard_ids:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        rows: list[Stored] = []
        for _ in range(100):
            answer = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            rows += [(r["SequenceNumber"], r["PartitionKey"], r["Data"]) for r in answer["Records"]]
            iterator = answer["NextShardIterator"]
            if not answer["Records"] and answer["MillisBehindLatest"] == 0:
                break
        found[shard_id] = rows
    return found


def aws_cli(tmp_path: Path, kinesis_endpoint: str, *args: str) -> Any:
    aws = str(Path(sys.executable).parent / "aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "cli",
        "AWS_SECRET_ACCESS_KEY": "cli",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_PAGER": "",
    }
    done = subprocess.run(
        [aws, "--endpoint-url", kinesis_endpoint, "--output", "json", "kinesis", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def aws_cli_read(tmp_path: Path, kinesis_endpoint: str, stream: str, shard_id: str) -> list[Stored]:
    iterator = aws_cli(
        tmp_path,
        kinesis_endpoint,
        "get-shard-iterator",
        "--stream-name",
        stream,
        "--shard-id",
        shard_id,
        "--shard-iterator-type",
        "TRIM_HORIZON",
    )["ShardIterator"]
    records = aws_cli(tmp_path, kinesis_endpoint, "get-records", "--shard-iterator", iterator)
    return [
        (r["SequenceNumber"], r["PartitionKey"], base64.b64decode(r["Data"]))
        for r in records["Records"]
    ]


# -- writing -------------------------------------------------------------------------------------


async def put_native(
    client: Client, stream: str, entries: list[tuple[bytes, str]]
) -> list[PutResult | RecordFailure]:
    return (await client.put_records(stream, entries)).results


def put_boto3(kinesis: Any, stream: str, entries: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
    answer = kinesis.put_records(
        StreamName=stream, Records=[{"Data": data, "PartitionKey": key} for data, key in entries]
    )
    records: list[dict[str, Any]] = answer["Records"]
    return records


# -- placement and the round trip ----------------------------------------------------------------


async def test_a_12_shard_stream_spreads_4_4_4_over_3_nodes(cluster: LocalCluster) -> None:
    stream = stream_name("spread")
    async with connect(cluster.endpoint(1)) as client:
        await client.create_stream(stream, SHARDS)
        leaders = await wait_placed(client, stream, set(NODES))
        assert collections.Counter(leaders.values()) == {node: 4 for node in NODES}
        nodes = (await client.call("cluster_nodes", {}))["nodes"]
        addresses = {n["node_id"]: n["native"] for n in nodes if n["live"]}
        assert addresses == {node: cluster.endpoint(node) for node in NODES}
        described = (await client.call("describe_stream", {"stream": stream}))["stream"]
        for shard in described["shards"]:  # the address a client routes to is the leader's
            assert shard["leader_address"] == cluster.endpoint(shard["leader"])
        await client.delete_stream(stream)


async def test_records_put_through_node_1_read_back_byte_exact_through_nodes_2_and_3(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    stream = stream_name("trip")
    rng = random.Random(11)
    written: list[tuple[PutResult, str, bytes]] = []
    kinesis1 = kinesis_client(cluster.node(1))
    async with connect(cluster.endpoint(1)) as client:
        await client.create_stream(stream, SHARDS)
        leaders = await wait_placed(client, stream, set(NODES))

        # 1. native, server-routed put_records through node 1 (it forwards 2/3 of them)
        entries = [(payload(rng, i), f"native-{i}") for i in range(120)]
        for result, (data, key) in zip(
            await put_native(client, stream, entries), entries, strict=True
        ):
            assert isinstance(result, PutResult), result
            written.append((result, key, data))

        # 2. the Producer through node 1 (shard-aware batches, each to the shard's leader)
        async with client.producer(stream) as producer:
            pending = [
                (await producer.put(data, key), key, data)
                for data, key in [(payload(rng, i), f"producer-{i}") for i in range(120)]
            ]
            await producer.flush()
        written += [(await put.result(), key, data) for put, key, data in pending]

    # 3. boto3 PutRecords through node 1's gateway
    entries = [(payload(rng, i), f"boto3-{i}") for i in range(120)]
    for record, (data, key) in zip(put_boto3(kinesis1, stream, entries), entries, strict=True):
        assert "ErrorCode" not in record, record
        written.append((PutResult(record["ShardId"], record["SequenceNumber"]), key, data))
    kinesis1.close()

    expected = by_shard(written)
    assert len(expected) == SHARDS
    assert {leaders[shard] for shard in expected} == set(NODES)  # forwarded to every node
    shard_ids = sorted(leaders)

    for which in (2, 3):
        assert await native_read_all(cluster.endpoint(which), stream, shard_ids) == expected
        kinesis = kinesis_client(cluster.node(which))
        assert boto3_read_all(kinesis, stream, shard_ids) == expected
        kinesis.close()

    # The aws CLI (a process per call, seconds each): through node 2 a shard led by node 3 and
    # one led by node 1, through node 3 one led by node 1 and one led by node 2.
    for which, other_leaders in ((2, ("node3", "node1")), (3, ("node1", "node2"))):
        for leader in other_leaders:
            shard_id = next(s for s in shard_ids if leaders[s] == leader)
            read = aws_cli_read(tmp_path, cluster.kinesis_endpoint(which), stream, shard_id)
            assert read == expected[shard_id]

    async with connect(cluster.endpoint(2)) as client:
        await client.delete_stream(stream)


# -- a stream created through another node ---------------------------------------------------


async def test_a_stream_created_through_node_2_takes_writes_through_node_3_once_active(
    cluster: LocalCluster,
) -> None:
    stream = stream_name("fresh")
    entries = [(b"first-%d" % i, f"k{i}") for i in range(60)]
    async with connect(cluster.endpoint(2)) as creator, connect(cluster.endpoint(3)) as writer:
        started = time.monotonic()
        await creator.create_stream(stream, SHARDS)
        created_s = time.monotonic() - started
        await writer.wait_for_active(stream, timeout_s=PLACE_TIMEOUT_S)
        active_s = time.monotonic() - started
        results = await put_native(writer, stream, entries)
        print(
            f"create through node 2 returned in {created_s * 1000:.0f} ms; ACTIVE through node 3 "
            f"after {active_s * 1000:.0f} ms; first put_records: "
            f"{sum(isinstance(r, PutResult) for r in results)} of {len(entries)} acked"
        )
        assert [r for r in results if not isinstance(r, PutResult)] == []
        await writer.delete_stream(stream)


# -- a node dies ---------------------------------------------------------------------------------


async def test_a_killed_node_makes_only_its_shards_unavailable_and_serves_them_after_restart(
    cluster: LocalCluster,
) -> None:
    stream = stream_name("kill")
    controller = controller_of(cluster)
    victim = next(
        n for n in ("node3", "node2") if n != controller
    )  # keep node 1 and the controller
    rng = random.Random(9)
    acked: list[tuple[PutResult, str, bytes]] = []
    ranges: list[tuple[int, int, str]] = []

    async def put_round(client: Client, tag: str) -> dict[str, list[PutResult | RecordFailure]]:
        entries = [(payload(rng, i), f"{tag}-{i}") for i in range(240)]
        per_shard: dict[str, list[PutResult | RecordFailure]] = collections.defaultdict(list)
        results = await put_native(client, stream, entries)
        for result, (data, key) in zip(results, entries, strict=True):
            shard = shard_for_key(ranges, key)
            per_shard[shard].append(result)
            if isinstance(result, PutResult):
                assert result.shard_id == shard
                acked.append((result, key, data))
        return per_shard

    async with connect(cluster.endpoint(1)) as client:
        # One copy per shard: a killed node's shards have nowhere to fail over (RF 3 failover
        # is test_cluster_replicated.py's).
        await client.create_stream(stream, SHARDS, replication_factor=1)
        leaders = await wait_placed(client, stream, set(NODES))
        described = (await client.call("describe_stream", {"stream": stream}))["stream"]
        ranges.extend(
            (s["hash_key_start"], s["hash_key_end"], s["shard_id"]) for s in described["shards"]
        )

        before = await put_round(client, "before")
        assert all(isinstance(r, PutResult) for rs in before.values() for r in rs)

        victims = {shard for shard, leader in leaders.items() if leader == victim}
        assert len(victims) == 4
        cluster.kill9(victim)

        # Until the controller sees the lease lapse, node 1 may still try the dead address;
        # from then on the victim's shards answer SHARD_UNAVAILABLE and nothing else changes.
        killed_at = time.monotonic()
        with trio.fail_after(UNAVAILABLE_TIMEOUT_S):
            while True:
                during = await put_round(client, f"during-{time.monotonic()}")
                codes = {
                    r.code
                    for s in victims
                    for r in during.get(s, [])
                    if isinstance(r, RecordFailure)
                }
                if codes == {"SHARD_UNAVAILABLE"} and all(
                    isinstance(r, RecordFailure) for s in victims for r in during.get(s, [])
                ):
                    break
                await trio.sleep(0.2)
        print(
            f"{victim} killed -9: its shards answered SHARD_UNAVAILABLE after "
            f"{time.monotonic() - killed_at:.2f} s"
        )
        for shard, results in during.items():  # every other shard took every write
            if shard not in victims:
                assert all(isinstance(r, PutResult) for r in results), (shard, results)
        for round_index in range(3):  # and keeps taking them
            again = await put_round(client, f"again-{round_index}")
            for shard, results in again.items():
                expect_ok = shard not in victims
                assert all(isinstance(r, PutResult) == expect_ok for r in results), (shard, results)

        # A read of a victim shard at a node that does not hold it: the native code.
        victim_shard = sorted(victims)[0]
        with pytest.raises(ShardUnavailableError):
            await client.call(
                "read",
                {
                    "stream": stream,
                    "shard_id": victim_shard,
                    "from": Position.trim_horizon().to_wire(),
                },
            )

        # Kinesis: per-record InternalFailure in PutRecords, 503 ServiceUnavailable for PutRecord.
        kinesis = kinesis_client(cluster.node(1))
        entries = [(payload(rng, i), f"kinesis-{i}") for i in range(120)]
        answered = put_boto3(kinesis, stream, entries)
        for record, (data, key) in zip(answered, entries, strict=True):
            if shard_for_key(ranges, key) in victims:
                assert record.get("ErrorCode") == "InternalFailure", record
            else:
                assert "ErrorCode" not in record, record
                acked.append((PutResult(record["ShardId"], record["SequenceNumber"]), key, data))
        victim_key = next(key for _, key in entries if shard_for_key(ranges, key) in victims)
        with pytest.raises(ClientError) as refused:
            kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey=victim_key)
        assert refused.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        kinesis.close()

        cluster.restart(victim)
        restarted_at = time.monotonic()
        with trio.fail_after(PLACE_TIMEOUT_S):
            while True:
                after = await put_round(client, f"after-{time.monotonic()}")
                if all(isinstance(r, PutResult) for rs in after.values() for r in rs):
                    break
                await trio.sleep(0.2)
        print(
            f"{victim} restarted: its shards took writes again "
            f"{time.monotonic() - restarted_at:.2f} s after its ready line"
        )
        assert await wait_placed(client, stream, set(NODES)) == leaders  # the same homes

    expected = by_shard(acked)
    assert await native_read_all(cluster.endpoint(1), stream, sorted(leaders)) == {
        shard: expected.get(shard, []) for shard in sorted(leaders)
    }
    async with connect(cluster.endpoint(1)) as client:
        await client.delete_stream(stream)


def shard_for_key(ranges: list[tuple[int, int, str]], key: str) -> str:
    hashed = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    return next(shard for start, end, shard in ranges if start <= hashed <= end)


async def test_killing_the_controllers_node_elects_another_within_5_s_and_admin_works_again(
    cluster: LocalCluster,
) -> None:
    controller = controller_of(cluster)
    assert controller in NODES
    survivors = [n for n in NODES if n != controller]
    cluster.kill9(controller)
    killed_at = time.monotonic()
    with trio.fail_after(CONTROLLER_FAILOVER_S_MAX + 5):
        while True:
            new_controller = controller_of(cluster)
            if new_controller not in (None, controller):
                break
            await trio.sleep(0.02)
    failover_s = time.monotonic() - killed_at
    print(
        f"controller {controller} killed -9: {new_controller} controller after {failover_s:.2f} s"
    )
    assert new_controller in survivors
    assert failover_s <= CONTROLLER_FAILOVER_S_MAX

    stream = stream_name("after")
    async with (
        connect(cluster.endpoint(survivors[0])) as first,
        connect(cluster.endpoint(survivors[1])) as second,
    ):
        await first.create_stream(stream, 6)
        leaders = await wait_placed(second, stream, set(survivors))
        assert collections.Counter(leaders.values()) == {n: 3 for n in survivors}
        results = await put_native(second, stream, [(b"r%d" % i, f"k{i}") for i in range(60)])
        assert [r for r in results if not isinstance(r, PutResult)] == []
        await second.delete_stream(stream)
        with trio.fail_after(PLACE_TIMEOUT_S):
            while True:
                if stream not in await first.list_streams():
                    break
                await trio.sleep(0.05)

    cluster.restart(controller)  # the module's cluster is whole again
    cluster.wait_registered()


# -- refusals at start ---------------------------------------------------------------------------


def serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    native, kinesis = free_ports("127.0.0.1", 2)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streamd",
            "serve",
            "--listen",
            f"127.0.0.1:{native}",
            "--kinesis-listen",
            f"127.0.0.1:{kinesis}",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=SERVE_TIMEOUT_S,
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The ``error: ...`` line of a refused start: exit 2, no ready line, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "streamd ready" not in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_an_unreachable_etcd_is_refused(tmp_path: Path) -> None:
    (port,) = free_ports("127.0.0.1", 1)
    line = refusal(serve(tmp_path / "d", "--cluster", f"etcd://127.0.0.1:{port}", "--node-id", "n"))
    assert f"127.0.0.1:{port}" in line and "etcd does not answer" in line, line


@pytest.fixture
def http_server() -> Iterator[str]:
    """A plain HTTP server (404 for everything): an address that answers, but not as etcd."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet404)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _Quiet404(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE HTML>\n<html>\n<body><h1>404</h1>\n</body>\n</html>\n"
        self.send_response(404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_http_server_that_is_not_etcd_is_refused_in_one_line(
    tmp_path: Path, http_server: str
) -> None:
    line = refusal(serve(tmp_path / "d", "--cluster", f"etcd://{http_server}", "--node-id", "n"))
    assert http_server in line and "etcd" in line, line


def test_a_streamd_native_port_given_as_etcd_is_refused(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    native = cluster.endpoint(1)
    line = refusal(serve(tmp_path / "d", "--cluster", f"etcd://{native}", "--node-id", "n"))
    assert native in line and "etcd" in line, line


def test_a_node_id_a_live_node_holds_is_refused_and_the_holder_keeps_serving(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    line = refusal(serve(tmp_path / "d", *cluster.serve_args("node2")))
    assert "node2" in line and "already registered by a live node" in line, line
    assert "node2" in cluster.registered()
    assert cluster.exited() == {}


def test_a_node_of_another_cluster_is_refused(tmp_path: Path, cluster: LocalCluster) -> None:
    cluster_id = (cluster.root_dir / "node1" / "cluster-id").read_text().strip()
    line = refusal(serve(tmp_path / "d", *cluster.serve_args("node7"), "--cluster-id", "other-c"))
    assert "'other-c'" in line and cluster_id in line, line
    assert "node7" not in cluster.registered()


def test_a_data_dir_of_another_cluster_is_refused(tmp_path: Path, cluster: LocalCluster) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "cluster-id").write_text("elsewhere\n")
    line = refusal(serve(data, *cluster.serve_args("node8")))
    assert "'elsewhere'" in line, line
    assert "node8" not in cluster.registered()
