"""The ``streamd`` command against a real server: what a person types, what they see.

Each call runs ``python -m streamd ...`` as its own process with ``STREAMD_ENDPOINT`` set, and
checks stdout, stderr and the exit status (cli/common.py documents the codes).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from streamd.testing import ServerProcess

CLI_TIMEOUT_S = 60


def streamd(
    server: ServerProcess, *args: str, stdin: bytes = b"", timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, STREAMD_ENDPOINT=server.endpoint)
    return subprocess.run(
        [sys.executable, "-m", "streamd", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_stream_lifecycle(server: ServerProcess, stream_name: str) -> None:
    assert f"created stream {stream_name} with 3 shard(s)" in ok(
        streamd(server, "stream", "create", stream_name, "--shards", "3")
    )
    assert stream_name in ok(streamd(server, "stream", "list")).split()

    text = ok(streamd(server, "stream", "describe", stream_name))
    assert "shardId-000000000002" in text and "ACTIVE" in text

    document = json.loads(ok(streamd(server, "stream", "describe", stream_name, "--json")))
    assert document["name"] == stream_name and document["retention_hours"] == 24
    shards = document["shards"]
    assert [s["shard_id"] for s in shards] == [f"shardId-00000000000{i}" for i in range(3)]
    assert shards[0]["hash_key_start"] == "0"
    assert int(shards[-1]["hash_key_end"]) == 2**128 - 1

    ok(streamd(server, "stream", "retention", stream_name, "--hours", "72"))
    document = json.loads(ok(streamd(server, "stream", "describe", stream_name, "--json")))
    assert document["retention_hours"] == 72

    assert f"deleted stream {stream_name}" in ok(streamd(server, "stream", "delete", stream_name))
    assert stream_name not in ok(streamd(server, "stream", "list")).split()


def test_put_then_read_json(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "2"))
    lines = [f"line {i} ünïcode" for i in range(200)]
    out = ok(
        streamd(server, "put", stream_name, "--random-key", stdin="\n".join(lines).encode() + b"\n")
    )
    assert "put 200 record(s): 200 acknowledged, 0 failed" in out

    records = [
        json.loads(line) for line in ok(streamd(server, "read", stream_name, "--json")).splitlines()
    ]
    assert sorted(r["data"] for r in records) == sorted(lines)
    assert {r["shard_id"] for r in records} == {"shardId-000000000000", "shardId-000000000001"}
    for r in records:
        assert set(r) == {"shard_id", "sequence_number", "partition_key", "data", "arrival_time"}
        assert len(r["sequence_number"]) == 56 and r["arrival_time"].endswith("Z")
    # Within a shard, records come in sequence order.
    for shard_id in {r["shard_id"] for r in records}:
        sequences = [int(r["sequence_number"]) for r in records if r["shard_id"] == shard_id]
        assert sequences == sorted(sequences)


def test_put_with_key_keeps_order_and_plain_read(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "4"))
    ok(streamd(server, "put", stream_name, "--partition-key", "one", stdin=b"a\nb\nc\n"))
    assert ok(streamd(server, "read", stream_name)) == "a\nb\nc\n"
    assert ok(streamd(server, "read", stream_name, "--limit", "2")) == "a\nb\n"


def test_put_json_lines_and_binary_read(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    binary = bytes(range(256))
    stdin = (
        json.dumps({"partition_key": "p1", "data": "text"})
        + "\n\n"
        + json.dumps(
            {"partition_key": "p2", "data": base64.b64encode(binary).decode(), "encoding": "base64"}
        )
        + "\n"
    ).encode()
    assert "2 acknowledged" in ok(streamd(server, "put", stream_name, "--json", stdin=stdin))
    first, second = (
        json.loads(line) for line in ok(streamd(server, "read", stream_name, "--json")).splitlines()
    )
    assert (first["partition_key"], first["data"]) == ("p1", "text")
    assert "encoding" not in first
    assert second["encoding"] == "base64" and base64.b64decode(second["data"]) == binary


def test_put_refuses_missing_and_empty_keys_unless_random(
    server: ServerProcess, stream_name: str
) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    for args, needle in [
        ((), "put needs a partition key"),
        (("--partition-key", ""), "--partition-key must not be empty"),
    ]:
        result = streamd(server, "put", stream_name, *args, stdin=b"a\n")
        assert result.returncode == 2 and needle in result.stderr.decode()
    lines = b'{"data": "no key"}\n{"data": "empty", "partition_key": ""}\n'
    refused = streamd(server, "put", stream_name, "--json", stdin=lines)
    assert refused.returncode == 4
    assert "put 2 record(s): 0 acknowledged, 2 failed (INVALID_PARTITION_KEY x2)" in (
        refused.stdout.decode()
    )
    assert ok(streamd(server, "read", stream_name)) == ""  # nothing was stored
    random = streamd(server, "put", stream_name, "--json", "--random-key", stdin=lines)
    assert "2 acknowledged, 0 failed" in ok(random)
    keys = {
        json.loads(line)["partition_key"]
        for line in ok(streamd(server, "read", stream_name, "--json")).splitlines()
    }
    assert len(keys) == 2 and all(len(key) == 32 for key in keys)


def test_read_prints_text_else_base64_or_hex_and_raw_bytes(
    server: ServerProcess, stream_name: str
) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    binary = b"\x00\xff\x1b[2J"  # not UTF-8, and a terminal escape
    escape = b"\x1b[31mred"  # UTF-8, but a terminal escape
    stdin = b"".join(
        json.dumps({"partition_key": "k", **item}).encode() + b"\n"
        for item in (
            {"data": "héllo"},
            {"data": base64.b64encode(binary).decode(), "encoding": "base64"},
            {"data": escape.hex(), "encoding": "hex"},
        )
    )
    ok(streamd(server, "put", stream_name, "--json", stdin=stdin))
    plain = streamd(server, "read", stream_name).stdout
    assert plain == "héllo\n".encode() + base64.b64encode(binary) + b"\n" + (
        base64.b64encode(escape) + b"\n"
    )
    assert ok(streamd(server, "read", stream_name, "--binary", "hex")).splitlines()[1:] == [
        binary.hex(),
        escape.hex(),
    ]
    raw = streamd(server, "read", stream_name, "--raw").stdout
    assert raw == "héllo\n".encode() + binary + b"\n" + escape + b"\n"
    documents = [
        json.loads(line)
        for line in ok(
            streamd(server, "read", stream_name, "--json", "--binary", "hex")
        ).splitlines()
    ]
    assert documents[1]["encoding"] == "hex" and bytes.fromhex(documents[1]["data"]) == binary
    assert documents[2]["data"] == escape.decode() and "encoding" not in documents[2]
    # What read --json prints, put --json takes back unchanged (hex included).
    copy = f"{stream_name}-copy"
    ok(streamd(server, "stream", "create", copy, "--shards", "1"))
    lines = "".join(json.dumps(d) + "\n" for d in documents).encode()
    ok(streamd(server, "put", copy, "--json", stdin=lines))
    assert streamd(server, "read", copy, "--raw").stdout == raw


def test_read_from_positions(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "2"))
    ok(streamd(server, "put", stream_name, "--partition-key", "k", stdin=b"1\n2\n3\n"))
    records = [
        json.loads(x) for x in ok(streamd(server, "read", stream_name, "--json")).splitlines()
    ]
    second = records[1]["sequence_number"]
    assert ok(streamd(server, "read", stream_name, "--from", f"at:{second}")) == "2\n3\n"
    assert ok(streamd(server, "read", stream_name, "--from", f"after:{second}")) == "3\n"
    assert ok(streamd(server, "read", stream_name, "--from", "latest")) == ""
    assert ok(streamd(server, "read", stream_name, "--from", "ts:2000-01-01T00:00:00Z")) == (
        "1\n2\n3\n"
    )
    shard = records[0]["shard_id"]
    assert ok(streamd(server, "read", stream_name, "--shard", shard)) == "1\n2\n3\n"


def test_read_follow_sees_new_records(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "2"))
    env = dict(os.environ, STREAMD_ENDPOINT=server.endpoint)
    follower = subprocess.Popen(
        [sys.executable, "-m", "streamd", "read", stream_name, "--follow", "--limit", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        time.sleep(1.0)  # let the follower reach the tip and park its long-polls
        ok(streamd(server, "put", stream_name, "--partition-key", "k", stdin=b"x\ny\nz\n"))
        out, err = follower.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate(timeout=CLI_TIMEOUT_S)
    assert follower.returncode == 0, err.decode()
    assert out == b"x\ny\nz\n"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("stream", "describe", "no-such-stream"), 1, "error: STREAM_NOT_FOUND: "),
        (("stream", "delete", "no-such-stream"), 1, "error: STREAM_NOT_FOUND: "),
        (("stream", "create", "bad name", "--shards", "1"), 1, "error: INVALID_STREAM_NAME: "),
        (("stream", "create", "x", "--shards", "0"), 1, "error: INVALID_ARGUMENT: "),
        (("read", "no-such-stream"), 1, "error: STREAM_NOT_FOUND: "),
        (("read", "s", "--from", "yesterday"), 1, "error: --from 'yesterday'"),
        (("stream", "create"), 2, "usage:"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(
    server: ServerProcess, args: tuple[str, ...], code: int, needle: str
) -> None:
    result = streamd(server, *args)
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert needle in err and "Traceback" not in err


def test_duplicate_stream_is_an_error(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    result = streamd(server, "stream", "create", stream_name, "--shards", "1")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("error: STREAM_EXISTS: ")


def test_put_reports_failed_records_and_exits_4(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    too_long_key = "k" * 257
    stdin = (
        json.dumps({"partition_key": "good", "data": "a"})
        + "\n"
        + json.dumps({"partition_key": too_long_key, "data": "b"})
        + "\n"
        + "not json\n"
    ).encode()
    result = streamd(server, "put", stream_name, "--json", stdin=stdin)
    assert result.returncode == 4
    assert "put 3 record(s): 1 acknowledged, 2 failed" in result.stdout.decode()
    err = result.stderr.decode()
    assert "INVALID_PARTITION_KEY" in err and "line 3" in err and "Traceback" not in err


def test_unreachable_server_exits_3(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamd", "stream", "list", "--endpoint", "127.0.0.1:1"],
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr.decode().startswith("error: CONNECTION_LOST")


def test_serve_prints_ready_line_and_stops_on_sigterm(fresh_server: ServerProcess) -> None:
    # ServerProcess itself parsed the ready line; a clean stop is exit status 0.
    assert fresh_server.endpoint.startswith("127.0.0.1:")
    assert fresh_server.terminate() == 0
    log = fresh_server.log_text()
    assert "server.stopped" in log


def test_bench_produce_and_consume_print_figures(server: ServerProcess) -> None:
    produce = json.loads(
        ok(
            streamd(
                server,
                "bench",
                "produce",
                "--endpoint",
                server.endpoint,
                "--records",
                "30000",  # enough server CPU to be above /proc's 10 ms tick
                "--latency-samples",
                "50",
                "--repeat",
                "1",
                "--shards",
                "2",
                "--server-pid",
                str(server.pid),
                "--json",
            )
        )
    )
    median = produce["median"]
    assert median["records_acked"] == 30000 and median["records_per_s"] > 0
    assert median["server_records_per_cpu_s"] is not None
    assert median["ack_latency_ms"]["p50"] > 0
    consume = json.loads(
        ok(
            streamd(
                server,
                "bench",
                "consume",
                "--endpoint",
                server.endpoint,
                "--records",
                "3000",
                "--latency-samples",
                "30",
                "--repeat",
                "1",
                "--json",
            )
        )
    )
    assert consume["median"]["records_read"] == 3000
    assert consume["median"]["tail_latency_ms"]["p99"] > 0


def test_bench_starts_its_own_server_when_no_endpoint(server: ServerProcess) -> None:
    result = streamd(
        server,
        "bench",
        "produce",
        "--records",
        "1000",
        "--latency-samples",
        "20",
        "--repeat",
        "1",
    )
    text = ok(result)
    assert "bulk produce" in text and "records/CPU-s" in text
    assert "starting a server" in result.stderr.decode()


def test_endpoint_before_the_command_and_from_the_environment(
    server: ServerProcess, stream_name: str
) -> None:
    bare = {k: v for k, v in os.environ.items() if k != "STREAMD_ENDPOINT"}
    command = [sys.executable, "-m", "streamd"]
    created = subprocess.run(
        [*command, "--endpoint", server.endpoint, "stream", "create", stream_name, "--shards", "1"],
        capture_output=True,
        env=bare,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert created.returncode == 0, created.stderr.decode()
    listed = subprocess.run(
        [*command, "stream", "list"],
        capture_output=True,
        env=dict(bare, STREAMD_ENDPOINT=server.endpoint),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert stream_name in listed.stdout.decode().split()


def test_the_kinesis_port_or_an_http_url_says_what_to_use(tmp_path: object) -> None:
    with ServerProcess(kinesis=True) as gateway:
        kinesis_host_port = gateway.kinesis_endpoint.removeprefix("http://")
        # The Kinesis port answers the native hello in HTTP: said, with what to connect to.
        result = streamd(gateway, "stream", "list", "--endpoint", kinesis_host_port)
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert err.startswith(f"error: PROTOCOL_ERROR: {kinesis_host_port} answered in HTTP")
        assert "--listen address" in err and "Traceback" not in err and err.count("\n") == 1
        # A URL is refused before connecting (a bad command line).
        result = streamd(gateway, "--endpoint", gateway.kinesis_endpoint, "stream", "list")
        err = result.stderr.decode()
        assert result.returncode == 2, err
        assert f"'{gateway.kinesis_endpoint}' is a URL (http://)" in err
        assert "boto3, aws --endpoint-url" in err
        # The native port still works, of course.
        assert ok(streamd(gateway, "stream", "list")) == ""


def test_version(server: ServerProcess) -> None:
    from streamd import __version__

    assert ok(streamd(server, "--version")) == f"streamd {__version__}\n"
