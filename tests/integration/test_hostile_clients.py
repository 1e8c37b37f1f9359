"""Hostile native clients against a real server (issue 10, items 5, 6 and 9): a shared-reference
frame before the hello, trailing bytes after a message, a half-close right after a put, values
no handler may choke on (lone surrogates, huge integers), and a client that sends reads and
never reads the answers. Each gets a typed answer at once, and the server keeps serving the
others with its memory bounded."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, wire
from streamd_client.errors import InvalidPartitionKeyError
from streamd_client.sync import connect as sync_connect

from .test_protocol_garbage import RawConnection, assert_server_still_serves, frame

MIB = 1024 * 1024


def shared_reference_dag(levels: int) -> bytes:
    """``levels`` nested shareables (tag 28), each an array of the previous level inline and as
    a reference (tag 29): linear to decode, 2**levels paths to ``repr`` or walk."""
    out = b"\xd8\x1c\x62v1"
    for level in range(levels, 0, -1):
        out = b"\xd8\x1c\x82" + out + cbor2.dumps(cbor2.CBORTag(29, level))
    return out


def hello_bomb_frame(levels: int = 33) -> bytes:
    body = b"\xa3\x61i\x01\x62op\x65hello\x61a\xa1\x68versions" + shared_reference_dag(levels)
    return struct.pack(">I", len(body)) + body


@pytest.fixture
def stream(server: ServerProcess) -> Iterator[str]:
    name = f"h-{uuid.uuid4().hex[:12]}"
    with sync_connect(server.endpoint) as client:
        client.create_stream(name, 1)
        client.wait_for_active(name, 10.0)
    yield name


# ruff: noqa: E501  (the table of bad requests reads best one per line)

# -- item 5: shared references --------------------------------------------------------------------


def test_shared_reference_frame_before_hello_gets_a_protocol_error_at_once(
    server: ServerProcess,
) -> None:
    bomb = hello_bomb_frame()
    assert len(bomb) == 242
    attackers = [RawConnection(server.endpoint) for _ in range(3)]
    try:
        started = time.monotonic()
        for attacker in attackers:
            attacker.send(bomb)
        answers = [attacker.receive() for attacker in attackers]
        elapsed_s = time.monotonic() - started
        # Meanwhile everyone else is served (main froze for good: repr of a 2**33-path DAG).
        with sync_connect(server.endpoint, connect_timeout_s=5.0) as client:
            client.list_streams()
        assert all(a["i"] == 0 and a["e"]["code"] == "PROTOCOL_ERROR" for a in answers)
        assert all(len(a["e"]["message"]) < 300 for a in answers)
        assert elapsed_s < 2.0, elapsed_s  # generous on a loaded machine; typically ~1 ms
        assert all(attacker.closed_by_server() for attacker in attackers)
    finally:
        for attacker in attackers:
            attacker.close()


def test_a_tag_after_the_hello_is_refused_and_the_server_stays(server: ServerProcess) -> None:
    raw = RawConnection(server.endpoint)
    try:
        raw.hello()
        request = cbor2.dumps({"i": 2, "op": "list_streams", "a": cbor2.CBORTag(1, 0)})
        raw.send(frame(request))
        answer = raw.receive()
        assert answer["i"] == 0 and answer["e"]["code"] == "PROTOCOL_ERROR"
        assert raw.closed_by_server()
    finally:
        raw.close()
    assert_server_still_serves(server)


# -- item 9: unchecked values ----------------------------------------------------------------------


def test_trailing_bytes_after_the_message_are_a_protocol_error(server: ServerProcess) -> None:
    raw = RawConnection(server.endpoint)
    try:
        raw.hello()
        raw.send(frame(cbor2.dumps({"i": 2, "op": "list_streams", "a": {}}) + b"\xf6"))
        answer = raw.receive()  # main answered request 2 as if the null were not there
        assert answer["i"] == 0 and answer["e"]["code"] == "PROTOCOL_ERROR"
        assert "after the CBOR item" in answer["e"]["message"]
        assert raw.closed_by_server()
    finally:
        raw.close()


def test_a_put_sent_just_before_a_half_close_is_answered(
    server: ServerProcess, stream: str
) -> None:
    raw = RawConnection(server.endpoint)
    try:
        raw.hello()
        records = [{"k": "key", "d": b"sent before EOF"}]
        raw.request(2, "put_records", {"stream": stream, "records": records})
        raw.sock.shutdown(socket.SHUT_WR)  # the client is done writing, still reading
        answer = raw.receive()  # main: EOFError (applied, never acknowledged)
        assert answer["i"] == 2 and answer["r"]["failed"] == 0
        sequence = answer["r"]["results"][0]["sequence"]
        assert raw.closed_by_server()
    finally:
        raw.close()
    with sync_connect(server.endpoint) as client:
        result = client.read(stream, "shardId-000000000000", Position.trim_horizon())
    assert [(r.data, r.sequence_number) for r in result.records] == [(b"sent before EOF", sequence)]


def test_a_lone_surrogate_partition_key_is_a_typed_error(
    server: ServerProcess, stream: str
) -> None:
    with sync_connect(server.endpoint) as client:
        with pytest.raises(InvalidPartitionKeyError):  # main: UnicodeEncodeError from cbor2
            client.put_records(stream, [(b"x", "\ud800")])
        with pytest.raises(InvalidPartitionKeyError):
            client.put_record(stream, b"x", "ok\udfff")
        client.list_streams()  # the connection is fine
    # On the wire a lone surrogate cannot be valid UTF-8: such a frame is refused, typed.
    raw = RawConnection(server.endpoint)
    try:
        raw.hello()
        bad_key = b"\xa2\x61k\x63\xed\xa0\x80\x61d\x41x"  # {"k": <ED A0 80>, "d": b"x"}
        request = (
            b"\xa3\x61i\x02\x62op\x6bput_records\x61a\xa2\x66stream"
            + cbor2.dumps(stream)
            + b"\x67records\x81"
            + bad_key
        )
        raw.send(frame(request))
        answer = raw.receive()
        assert answer["i"] == 0 and answer["e"]["code"] == "PROTOCOL_ERROR"
    finally:
        raw.close()
    assert_server_still_serves(server)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("create_stream", {"stream": "huge-count", "shard_count": 10**5000}),
        ("update_retention", {"stream": "x", "retention_hours": 10**5000}),
        ("read", {"stream": "x", "shard_id": "shardId-000000000000", "wait_ms": 10**5000}),
        ("split_shard", {"stream": "x", "shard_id": "shardId-000000000000", "hash_key": 10**5000}),
        ("split_shard", {"stream": "x", "shard_id": "shardId-000000000000", "hash_key": "9" * 5000}),
        ("read", {"stream": "x", "shard_id": "shardId-000000000000", "from": {"type": "at_offset", "offset": 10**5000}}),
        ("read", {"stream": "x", "shard_id": "shardId-000000000000", "from": {"type": "at_sequence", "sequence": "1" * 5000}}),
        ("read", {"stream": "x", "shard_id": "shardId-" + "²" * 12}),
        ("read", {"stream": "x", "shard_id": "shardId-000000000000", "from": {"type": "at_sequence", "sequence": "²" * 56}}),
    ],
)  # fmt: skip
def test_huge_integers_and_odd_digits_are_invalid_argument(
    server: ServerProcess, op: str, args: dict[str, object]
) -> None:
    raw = RawConnection(server.endpoint)
    try:
        raw.hello()
        raw.request(7, op, args)
        answer = raw.receive()
        assert answer["i"] == 7, answer
        assert answer["e"]["code"] in {
            "INVALID_ARGUMENT",
            "INVALID_HASH_KEY",
            "INVALID_SEQUENCE_NUMBER",
            "STREAM_NOT_FOUND",  # checked before the number, for a stream that does not exist
        }, answer
        assert len(answer["e"]["message"]) < 400
        raw.request(8, "list_streams", {})  # the connection stays
        assert "streams" in raw.receive()["r"]
    finally:
        raw.close()


# -- item 6: a client that never reads its answers ----------------------------------------------


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_holds_the_server_rss_flat(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", fsync="never") as server:
        name = "not-reading"
        with sync_connect(server.endpoint) as client:
            client.create_stream(name, 1)
            client.wait_for_active(name, 10.0)
            for _ in range(7):  # incompressible: a read answer is ~7 MiB
                client.put_record(name, os.urandom(MIB - 1024), "k")
            warm = client.read(
                name, "shardId-000000000000", Position.trim_horizon(), max_bytes=8 * MIB
            )
            assert len(warm.records) == 7
        baseline = vm_rss_bytes(server.pid)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
        host, port = server.endpoint.rsplit(":", 1)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        try:
            hello = wire.request(1, wire.OP_HELLO, {"versions": [1]})
            sock.sendall(wire.encode_message(hello))
            args = {
                "stream": name,
                "shard_id": "shardId-000000000000",
                "from": {"type": "trim_horizon"},
                "max_bytes": 8 * MIB,
            }
            reads = b"".join(
                wire.encode_message(wire.request(2 + i, wire.OP_READ, args)) for i in range(60)
            )
            sock.setblocking(False)
            try:
                sock.send(reads)  # as much as the kernel takes; the server reads what it will
            except BlockingIOError:
                pass
            peak = baseline
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                peak = max(peak, vm_rss_bytes(server.pid))
                time.sleep(0.1)
            grown_mib = (peak - baseline) / MIB
            # main: every read answered into the outbox, about +7.7 MiB each (60: ~460 MiB).
            # Now: 32 MiB of outbox plus the answer being written, and allocator slack.
            assert grown_mib < 150, f"server RSS grew {grown_mib:.0f} MiB"
            with sync_connect(server.endpoint, connect_timeout_s=5.0) as client:
                assert client.list_streams() == [name]  # everyone else is served
        finally:
            sock.close()
