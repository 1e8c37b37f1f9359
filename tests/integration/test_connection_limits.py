"""Connection exhaustion on both listeners (issue 10, item 7), against a real server process.

- 2,000 idle sockets from one address (127.0.0.1), half of them after a hello (native) or a
  whole request (gateway), half with nothing sent: the server admits its per-address share, every
  other one gets the typed refusal (LIMIT_EXCEEDED frame / 503 ServiceUnavailable), and a normal
  client from another address (127.0.0.2, by binding the client socket's source address) still
  connects and puts.
- Idle timeouts: after the hello (or a request) and before it, on both listeners; a long-poll
  in flight is not idle, and the client library reconnects by itself after an idle close.
- accept() under a low RLIMIT_NOFILE: logged (``accept_failed``, EMFILE), backed off (little
  CPU, few log lines), and serving resumes once descriptors are free again.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, wire
from streamd_client import connect as async_connect
from streamd_client.sync import connect

IDLE_SOCKETS = 2000
PER_ADDRESS = 256  # the default: a quarter of --connections-max 1024
NORMAL_CLIENT = "127.0.0.2"


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> Iterator[None]:
    """This process holds 2,000 sockets at once (and the server, our child, inherits the limit):
    raise the soft RLIMIT_NOFILE as far as the hard limit allows, and put it back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * IDLE_SOCKETS
    if hard != resource.RLIM_INFINITY:
        assert hard >= wanted, f"hard RLIMIT_NOFILE {hard} is below the {wanted} this test needs"
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("connection-limits")
    # A long handshake timeout: the silent sockets must stay idle for the whole test.
    args = ["--handshake-timeout-s", "120"]
    with ServerProcess(base / "data", fsync="never", kinesis=True, extra_args=args) as process:
        with connect(process.endpoint) as client:
            client.create_stream("s", 1)
        yield process


# -- the native protocol, spoken over a plain socket ----------------------------------------


def hello_frame(request_id: int = 1) -> bytes:
    args = {"versions": [wire.PROTOCOL_VERSION], "client": "test"}
    return wire.encode_message(wire.request(request_id, wire.OP_HELLO, args))


def read_frame(sock: socket.socket, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The next whole message, or None at EOF (or a reset after it)."""
    decoder = wire.FrameDecoder(wire.FRAME_BYTES_MAX_DEFAULT)
    deadline = time.monotonic() + timeout_s
    while True:
        message = decoder.next_message()
        if isinstance(message, dict):
            return message
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        decoder.receive_data(data)


def native_put_from(source: str, server: ServerProcess) -> dict[str, Any]:
    """Connect from ``source``, shake hands and put one record: the put's result map."""
    with socket.create_connection(
        (server.host, server.port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(hello_frame())
        answer = read_frame(sock)
        assert answer is not None and "r" in answer, answer
        records = [{"k": "key", "d": b"normal client"}]
        sock.sendall(
            wire.encode_message(wire.request(2, "put_records", {"stream": "s", "records": records}))
        )
        answer = read_frame(sock)
        assert answer is not None and answer["i"] == 2 and "r" in answer, answer
        return dict(answer["r"])


def open_idle_sockets(port: int, greeting: bytes) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    for i in range(IDLE_SOCKETS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2 == 0:
            sock.sendall(greeting)
        sockets.append(sock)
    return sockets


def readable(sockets: list[socket.socket], wait_s: float) -> set[socket.socket]:
    """The sockets with something to read (an answer, a refusal, an EOF) within ``wait_s``."""
    found: set[socket.socket] = set()
    deadline = time.monotonic() + wait_s
    pending = list(sockets)
    while pending and time.monotonic() < deadline:
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in pending}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(200):
            found.add(by_fd[fd])
        pending = [sock for sock in pending if sock not in found]
    return found


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_native_2000_idle_sockets_from_one_address_leave_room(server: ServerProcess) -> None:
    sockets = open_idle_sockets(server.port, hello_frame())
    try:
        result = native_put_from(NORMAL_CLIENT, server)
        assert result["failed"] == 0

        said_hello, silent = sockets[0::2], sockets[1::2]
        refused = {"hello": 0, "silent": 0}
        admitted = {"hello": 0, "silent": 0}
        for sock in said_hello:  # each gets a hello answer (admitted) or the refusal
            message = read_frame(sock)
            assert message is not None
            if "r" in message:
                admitted["hello"] += 1
            else:
                assert message["i"] == 0 and message["e"]["code"] == "LIMIT_EXCEEDED", message
                assert message["e"]["details"]["limit"] == "connections_per_address_max"
                assert read_frame(sock) is None  # and the close
                refused["hello"] += 1
        answered = readable(silent, wait_s=3.0)  # admitted silent ones hear nothing
        for sock in answered:
            message = read_frame(sock)
            assert message is not None and message["e"]["code"] == "LIMIT_EXCEEDED", message
            refused["silent"] += 1
        admitted["silent"] = len(silent) - refused["silent"]
        assert admitted["hello"] + admitted["silent"] == PER_ADDRESS, (admitted, refused)
        assert refused["hello"] + refused["silent"] == IDLE_SOCKETS - PER_ADDRESS

        # Still room for everyone else, even with this address's share held.
        assert native_put_from(NORMAL_CLIENT, server)["failed"] == 0
        assert native_put_from("127.0.0.3", server)["failed"] == 0
    finally:
        close_all(sockets)
    events = [line for line in log_events(server) if line["event"] == "connection.refused"]
    assert events and len(events) < 50  # refusals are logged, but rate-limited


def list_streams_request() -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\n"
        b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}"
    )


def kinesis_put_from(source: str, server: ServerProcess) -> dict[str, Any]:
    host, port = server.kinesis_endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        body = json.dumps({"StreamName": "s", "Data": "eA==", "PartitionKey": "k"})
        conn.request(
            "POST",
            "/",
            body=body,
            headers={
                "X-Amz-Target": "Kinesis_20131202.PutRecord",
                "Content-Type": "application/x-amz-json-1.1",
            },
        )
        response = conn.getresponse()
        answer: dict[str, Any] = json.loads(response.read())
        assert response.status == 200, answer
        return answer
    finally:
        conn.close()


def read_http_answer(sock: socket.socket) -> tuple[int, dict[str, Any]] | None:
    """Status and JSON body of the next answer on a raw socket; None at a bare EOF."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return None
    return response.status, json.loads(response.read())


def test_gateway_2000_idle_sockets_from_one_address_leave_room(server: ServerProcess) -> None:
    sockets = open_idle_sockets(server.kinesis_port, list_streams_request())
    try:
        assert kinesis_put_from(NORMAL_CLIENT, server)["ShardId"] == "shardId-000000000000"
        admitted = refused = 0
        for sock in sockets[0::2]:
            sock.settimeout(10)
            answer = read_http_answer(sock)
            assert answer is not None
            status, body = answer
            if status == 200:
                admitted += 1
                assert body["StreamNames"] == ["s"]
            else:
                assert (status, body["__type"]) == (503, "ServiceUnavailable"), answer
                refused += 1
        silent = sockets[1::2]
        answered = readable(silent, wait_s=3.0)
        for sock in answered:
            sock.settimeout(10)
            answer = read_http_answer(sock)
            assert answer is not None and answer[0] == 503, answer
            refused += 1
        admitted += len(silent) - len(answered)
        assert (admitted, refused) == (PER_ADDRESS, IDLE_SOCKETS - PER_ADDRESS)
        assert kinesis_put_from("127.0.0.3", server)["ShardId"] == "shardId-000000000000"
    finally:
        close_all(sockets)


def log_events(server: ServerProcess) -> list[dict[str, Any]]:
    events = []
    for line in Path(server.log_path).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# -- idle timeouts ---------------------------------------------------------------------------


def test_idle_connections_are_closed_before_and_after_the_handshake(tmp_path: Path) -> None:
    args = [
        "--idle-timeout-s", "1", "--kinesis-idle-timeout-s", "1", "--handshake-timeout-s", "1",
    ]  # fmt: skip
    with ServerProcess(tmp_path / "data", fsync="never", kinesis=True, extra_args=args) as server:
        with connect(server.endpoint) as client:
            client.create_stream("s", 1)
        native_silent = socket.create_connection((server.host, server.port), timeout=10)
        native_idle = socket.create_connection((server.host, server.port), timeout=10)
        native_idle.sendall(hello_frame())
        assert "r" in (read_frame(native_idle) or {})
        gateway_silent = socket.create_connection((server.host, server.kinesis_port), timeout=10)
        gateway_idle = socket.create_connection((server.host, server.kinesis_port), timeout=10)
        gateway_idle.sendall(list_streams_request())
        gateway_idle.settimeout(10)
        assert (read_http_answer(gateway_idle) or (0,))[0] == 200
        started = time.monotonic()

        farewell = read_frame(native_idle)
        assert farewell is not None and farewell["i"] == 0
        assert farewell["e"]["code"] == "TIMEOUT" and "idle" in farewell["e"]["message"]
        assert read_frame(native_idle) is None
        before_hello = read_frame(native_silent)
        assert before_hello is not None and before_hello["e"]["code"] == "PROTOCOL_ERROR"
        for sock in (gateway_silent, gateway_idle):
            sock.settimeout(10)
            assert sock.recv(100) == b""  # closed quietly
        assert time.monotonic() - started < 8
        for sock in (native_silent, native_idle, gateway_silent, gateway_idle):
            sock.close()

        async def long_poll_then_reuse() -> None:
            async with async_connect(server.endpoint) as client:
                # A read waiting 2.5 s is in flight: the connection is not idle meanwhile.
                waited = time.monotonic()
                shard = "shardId-000000000000"
                result = await client.read("s", shard, Position.latest(), wait_ms=2500)
                assert time.monotonic() - waited >= 2.0 and result.records == []
                await anyio.sleep(2.5)  # now idle: the server closes it ...
                put = await client.put_record("s", b"after idle", "k")  # ... and a new one opens
                assert put.shard_id == "shardId-000000000000"

        anyio.run(long_poll_then_reuse)
    closed = [e for e in log_events(server) if e["event"] == "connection.idle_closed"]
    assert closed


# -- accept() without descriptors ----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_accept_backs_off_when_out_of_descriptors(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", fsync="never", kinesis=True) as server:
        with connect(server.endpoint) as client:
            client.create_stream("s", 1)
        soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
        in_use = len(list(Path(f"/proc/{server.pid}/fd").iterdir()))
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (in_use + 8, hard))
        sockets: list[socket.socket] = []
        try:
            for i in range(40):
                port = server.port if i % 2 == 0 else server.kinesis_port
                sockets.append(socket.create_connection((server.host, port), timeout=10))
                if port == server.port:
                    sockets[-1].sendall(hello_frame())
            time.sleep(0.5)  # the server is out of descriptors now
            cpu_before = cpu_seconds(server.pid)
            time.sleep(2.0)
            cpu_used = cpu_seconds(server.pid) - cpu_before
            failures = [e for e in log_events(server) if e["event"].endswith("accept_failed")]
            assert failures, "accept() failing for lack of descriptors was not logged"
            assert {e["errno"] for e in failures} == {"EMFILE"}
            assert len(failures) < 40  # backed off: a handful of lines, not one per spin
            assert cpu_used < 1.0, f"the server used {cpu_used:.2f} s of CPU in 2 s"
        finally:
            close_all(sockets)
            resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        deadline = time.monotonic() + 10
        while True:  # serving again once descriptors are free (the backoff is at most 1 s)
            try:
                assert native_put_from("127.0.0.1", server)["failed"] == 0
                break
            except (AssertionError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert kinesis_put_from("127.0.0.1", server)["ShardId"] == "shardId-000000000000"
    assert any(e["event"].endswith("accept_resumed") for e in log_events(server))
