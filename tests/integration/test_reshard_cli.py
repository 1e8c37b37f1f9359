"""The resharding commands end to end: ``streamd shard split|merge``, ``streamd stream resize``
with its progress lines, ``streamd stream describe`` as a lineage tree, and ``streamd read
--follow`` crossing a split (each command its own process, against a real server).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time

from streamd.testing import ServerProcess
from streamd_client.model import shard_id_of

from .test_cli_end_to_end import ok, streamd


def put_lines(server: ServerProcess, stream: str, records: list[tuple[str, str]]) -> None:
    """Put (partition key, text) records with one ``streamd put --json``."""
    lines = [json.dumps({"partition_key": key, "data": data}) for key, data in records]
    out = ok(streamd(server, "put", stream, "--json", stdin="\n".join(lines).encode()))
    assert f"{len(lines)} acknowledged, 0 failed" in out


def test_split_merge_resize_and_describe_the_lineage(
    server: ServerProcess, stream_name: str
) -> None:
    s0, s1 = shard_id_of(0), shard_id_of(1)
    ok(streamd(server, "stream", "create", stream_name, "--shards", "2"))
    at = str(2**126)
    out = ok(streamd(server, "shard", "split", stream_name, s0, "--at", at))
    assert out.strip() == f"split {s0} of {stream_name} into {shard_id_of(2)} and {shard_id_of(3)}"
    out = ok(streamd(server, "shard", "merge", stream_name, shard_id_of(3), s1))
    assert out.strip() == (
        f"merged {shard_id_of(3)} and {s1} of {stream_name} into {shard_id_of(4)}"
    )

    text = ok(streamd(server, "stream", "describe", stream_name))
    assert "shards           5 (2 open, 3 closed)" in text
    lines = text.splitlines()
    indent = {
        shard_id: len(line) - len(line.lstrip())
        for line in lines
        for shard_id in [line.split()[0]]
        if shard_id.startswith("shardId-") and line.split()[1] in ("open", "closed")
    }
    # s0 and s1 are roots; s2 and s3 under s0; s4 (merged from s3 and s1) under s3.
    assert indent[s0] == indent[s1] == 2
    assert indent[shard_id_of(2)] == indent[shard_id_of(3)] == 4
    assert indent[shard_id_of(4)] == 6
    assert f"merged into {shard_id_of(4)}" in text
    assert lines.index(next(x for x in lines if x.strip().startswith(shard_id_of(2)))) > (
        lines.index(next(x for x in lines if x.strip().startswith(s0)))
    )
    document = json.loads(ok(streamd(server, "stream", "describe", stream_name, "--json")))
    assert document["reshard"] is None and document["status"] == "ACTIVE"
    child = next(s for s in document["shards"] if s["shard_id"] == shard_id_of(2))
    assert child["hash_key_end"] == str(2**126 - 1) and child["parent_shard_id"] == s0

    result = streamd(server, "stream", "resize", stream_name, "--shards", "4")
    out = ok(result)
    lines = out.splitlines()
    assert lines[0].startswith(f"resize {stream_name}: started, ") and "to 4 shards" in lines[0]
    assert lines[-1] == f"resize {stream_name}: done, 4 open shards"
    # One line per progress change while UPDATING (none if the server finished first).
    for line in lines[1:-1]:
        assert line.startswith(f"resize {stream_name}: ") and " operations done, " in line
        assert line.endswith(" open shards")

    out = ok(streamd(server, "stream", "resize", stream_name, "--shards", "5", "--no-wait"))
    assert out.startswith(f"resize {stream_name}: started") and "done" not in out


def test_resize_beyond_one_call_goes_in_hops(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "8"))
    lines = ok(streamd(server, "stream", "resize", stream_name, "--shards", "3")).splitlines()
    assert (
        lines[0] == f"resize {stream_name}: 8 -> 4 -> 3 (one call goes at most to half or double)"
    )
    done = [line for line in lines if ": done, " in line]
    assert done == [
        f"resize {stream_name}: done, 4 open shards",
        f"resize {stream_name}: done, 3 open shards",
    ]


def test_resharding_errors_are_one_line_and_exit_1(server: ServerProcess, stream_name: str) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "3"))
    cases = [
        (["shard", "merge", stream_name, shard_id_of(0), shard_id_of(2)], "INVALID_ARGUMENT"),
        (["shard", "split", stream_name, shard_id_of(0), "--at", "0"], "INVALID_ARGUMENT"),
        (["shard", "split", stream_name, shard_id_of(0), "--at", "x"], "INVALID_HASH_KEY"),
        (["shard", "split", stream_name, shard_id_of(7)], "SHARD_NOT_FOUND"),
        (["stream", "resize", stream_name, "--shards", "0"], "INVALID_ARGUMENT"),
    ]
    for argv, code in cases:
        result = streamd(server, *argv)
        assert result.returncode == 1, (argv, result)
        assert result.stderr.decode().startswith(f"error: {code}: "), (argv, result.stderr)
        assert b"Traceback" not in result.stderr


def _read_lines(process: subprocess.Popen[bytes], count: int, timeout_s: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    buffered = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while len(lines) < count:
            left_s = deadline - time.monotonic()
            assert left_s > 0, f"only {len(lines)} of {count} lines: {lines[-3:]}"
            if not selector.select(timeout=min(left_s, 0.5)):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, f"read exited early: {lines[-3:]}"
            buffered += chunk
            *whole, buffered = buffered.split(b"\n")
            lines += [line.decode() for line in whole]
    return lines


def test_read_follow_crosses_a_split_in_lineage_order(
    server: ServerProcess, stream_name: str
) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    env = dict(os.environ, STREAMD_ENDPOINT=server.endpoint)
    reader = subprocess.Popen(
        [sys.executable, "-m", "streamd", "read", stream_name, "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        keys = [f"user-{i}" for i in range(6)]
        put_lines(server, stream_name, [(k, f"{k} before {n}") for n in range(3) for k in keys])
        ok(streamd(server, "shard", "split", stream_name, shard_id_of(0)))
        put_lines(server, stream_name, [(k, f"{k} after {n}") for n in range(3) for k in keys])
        records = [json.loads(line) for line in _read_lines(reader, 36, 30)]
    finally:
        reader.terminate()
        reader.wait(timeout=10)
        assert reader.stdout is not None and reader.stderr is not None
        reader.stdout.close()
        reader.stderr.close()
    parent = [i for i, r in enumerate(records) if r["shard_id"] == shard_id_of(0)]
    children = [i for i, r in enumerate(records) if r["shard_id"] != shard_id_of(0)]
    assert len(parent) == 18 and len(children) == 18
    assert max(parent) < min(children)  # every parent record before any child record
    for key in keys:
        mine = [r["data"] for r in records if r["partition_key"] == key]
        assert mine == [f"{key} {when} {n}" for when in ("before", "after") for n in range(3)]
    assert {r["shard_id"] for r in records} - {shard_id_of(0)} <= {shard_id_of(1), shard_id_of(2)}


def test_read_of_one_closed_shard_stops_at_its_end_and_names_the_children(
    server: ServerProcess, stream_name: str
) -> None:
    ok(streamd(server, "stream", "create", stream_name, "--shards", "1"))
    put_lines(server, stream_name, [("k", "a"), ("k", "b")])
    ok(streamd(server, "shard", "split", stream_name, shard_id_of(0)))
    result = streamd(
        server, "read", stream_name, "--shard", shard_id_of(0), "--follow", timeout_s=20
    )
    assert ok(result).splitlines() == ["a", "b"]  # --follow on a closed shard ends
    assert f"continued by {shard_id_of(1)}, {shard_id_of(2)}" in result.stderr.decode()
