"""Big request bodies on the Kinesis gateway (issue 10, item 8), against a real server process.

- A normal PutRecord stays fast (p99 under 50 ms) while 4.9 MiB CBOR and JSON bodies are being
  decoded beside it: large bodies are decoded in worker processes, never on the event loop.
  The big bodies go to a stream that does not exist, so what they cost the server is their
  reception and decoding (not an append). The bound is the issue's; on a shared 2-core machine a
  run can be disturbed from outside, so the measurement (1,000 samples) is tried up to three
  times and one clean run passes; a gateway that decodes on the loop fails all three by far
  (its p99 is seconds).
- A body over what its operation can take is refused from its Content-Length before it is read,
  with the error the SDKs expect, and the answer reaches a client still sending.
- Bodies in flight are bounded across connections: over the bound a request waits, then is
  refused with 503; memory taken by a burst of big bodies is given back.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamd.frontends.kinesis import cbor
from streamd.testing import ServerProcess

JSON_TYPE = "application/x-amz-json-1.1"
CBOR_TYPE = "application/x-amz-cbor-1.1"
BIG_BYTES = int(4.9 * 1024 * 1024)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("big-bodies")
    with ServerProcess(base / "data", fsync="never", kinesis=True) as process:
        status, _ = post(process, "CreateStream", {"StreamName": "s", "ShardCount": 1})
        assert status == 200
        wait_active(process)
        yield process


def wait_active(gateway: ServerProcess) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, answer = post(gateway, "DescribeStreamSummary", {"StreamName": "s"})
        if answer["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.05)
    raise AssertionError("stream s never became ACTIVE")


def address(gateway: ServerProcess) -> tuple[str, int]:
    host, port = gateway.kinesis_endpoint.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def post(
    gateway: ServerProcess,
    operation: str,
    body: dict[str, Any] | bytes,
    *,
    content_type: str = JSON_TYPE,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, Any]]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(*address(gateway), timeout=60)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"X-Amz-Target": f"Kinesis_20131202.{operation}", "Content-Type": content_type}
        conn.request("POST", "/", body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        if response.getheader("content-type") == CBOR_TYPE:
            return response.status, dict(cbor.loads(raw))
        return response.status, json.loads(raw)
    finally:
        if own:
            conn.close()


# -- the big bodies ---------------------------------------------------------------------------


def big_bodies() -> list[tuple[str, bytes]]:
    """4.9 MiB bodies in both protocols, of two shapes: a few large records (what a producer
    sends) and very many small members (the most decoding work per byte). All name a stream
    that does not exist: only their reception and decoding cost the server anything."""
    count = 490  # PutRecords takes 500
    size = BIG_BYTES // count
    large = [{"Data": os.urandom(size - 40), "PartitionKey": f"k{i}"} for i in range(count)]
    cbor_large = cbor.dumps({"StreamName": "missing", "Records": large})
    json_records = [
        {"Data": base64.b64encode(r["Data"][: (size - 60) * 3 // 4]).decode(), "PartitionKey": "k"}
        for r in large
    ]
    json_large = json.dumps({"StreamName": "missing", "Records": json_records}).encode()
    small_count = BIG_BYTES // 3  # "0, " each
    cbor_small = cbor.dumps(
        {"StreamName": "missing", "Records": [{"Data": b"x"}] * (BIG_BYTES // 8)}
    )
    json_small = json.dumps({"StreamName": "missing", "Records": [0] * small_count}).encode()
    bodies = [
        (CBOR_TYPE, cbor_large),
        (JSON_TYPE, json_large),
        (CBOR_TYPE, cbor_small),
        (JSON_TYPE, json_small),
    ]
    for _, body in bodies:
        assert 4.5 * 1024 * 1024 < len(body) <= BIG_BYTES + 64 * 1024, len(body)
    return bodies


class BigBodySenders:
    """Threads that send big bodies back to back (each waits for its answer) until stopped."""

    def __init__(self, gateway: ServerProcess, bodies: list[tuple[str, bytes]], threads: int):
        self.gateway = gateway
        self.bodies = bodies
        self.stop = threading.Event()
        self.started = 0  # big bodies sent (answered or still being decoded)
        self.sent = 0  # ... and answered
        self.statuses: set[int] = set()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> BigBodySenders:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection(*address(self.gateway), timeout=60)
        try:
            i = index
            while not self.stop.is_set():
                content_type, body = self.bodies[i % len(self.bodies)]
                self.started += 1
                status, _ = post(
                    self.gateway, "PutRecords", body, content_type=content_type, conn=conn
                )
                self.statuses.add(status)
                self.sent += 1
                i += 1
        finally:
            conn.close()


def put_record_latencies_ms(gateway: ServerProcess, samples: int) -> list[float]:
    conn = http.client.HTTPConnection(*address(gateway), timeout=60)
    body = {"StreamName": "s", "Data": base64.b64encode(b"normal").decode(), "PartitionKey": "k"}
    latencies = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            status, answer = post(gateway, "PutRecord", body, conn=conn)
            latencies.append((time.perf_counter() - started) * 1000)
            assert status == 200, answer
            time.sleep(0.002)
    finally:
        conn.close()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def measure(gateway: ServerProcess, samples: int = 1000, senders: int = 2) -> dict[str, float]:
    """PutRecord latency (ms) while ``senders`` threads keep big bodies in flight."""
    with BigBodySenders(gateway, big_bodies(), senders) as load:
        time.sleep(0.5)  # the senders are busy (and the decode workers started)
        started = load.started
        latencies = put_record_latencies_ms(gateway, samples)
        return {
            "p50_ms": statistics.median(latencies),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies),
            "big_bodies": load.started - started + len(load.threads),  # in flight throughout
            "big_bodies_answered": load.sent,
        }


def test_put_record_p99_stays_low_while_big_bodies_are_decoded(gateway: ServerProcess) -> None:
    runs = []
    for _ in range(3):
        figures = measure(gateway)
        runs.append(figures)
        assert figures["big_bodies"] >= 2, figures  # the load was there
        if figures["p99_ms"] < 50:
            break
    else:
        raise AssertionError(f"PutRecord p99 over 50 ms in every run: {runs}")


# -- the body bounds ----------------------------------------------------------------------------


def test_a_body_over_its_operation_bound_is_refused_before_it_is_read(
    gateway: ServerProcess,
) -> None:
    """A client announcing a 15 MiB PutRecords (over the 13.8 MiB that 10 MiB of records, the
    most a stream of large records takes, can be in JSON) gets InvalidArgumentException at once,
    while it is still sending (the server reads and drops the rest, so the answer is not lost to
    a reset)."""
    size = 15 * 1024 * 1024
    with socket.create_connection(address(gateway), timeout=30) as sock:
        head = (
            "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.PutRecords\r\n"
            f"Content-Type: {JSON_TYPE}\r\nContent-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode())
        started = time.monotonic()
        response = http.client.HTTPResponse(sock)
        response.begin()  # the answer comes before the body was sent at all
        assert time.monotonic() - started < 5
        answer = json.loads(response.read())
        assert response.status == 400
        assert answer["__type"] == "InvalidArgumentException"
        assert answer["message"].startswith("Records size exceeds 10 MB limit")
    status, answer = post(
        gateway,
        "PutRecord",
        {"StreamName": "s", "Data": "x" * (14 * 1024 * 1024), "PartitionKey": "k"},
    )
    assert (status, answer["__type"]) == (400, "ValidationException")
    # A body within the bound still gets the operation's own check, as before.
    entries = [{"Data": base64.b64encode(b"x" * 1_100_000).decode(), "PartitionKey": "k"}]
    status, answer = post(gateway, "PutRecords", {"StreamName": "s", "Records": entries})
    assert (status, answer["__type"]) == (400, "ValidationException")


def rss_bytes(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


CLIENTS = 40


def test_bodies_in_flight_are_bounded_and_memory_is_given_back(gateway: ServerProcess) -> None:
    """40 clients send 4.9 MiB bodies at once (196 MiB): at most 64 MiB are admitted at a time,
    the others wait their turn (or get 503 if it does not come in 5 s), every answer is a Kinesis
    one, and the server's RSS comes back down afterwards. (Before: the peak grew by all of them,
    and 22 MiB stayed.)"""
    _, cbor_large = big_bodies()[0]
    before = rss_bytes(gateway.pid)
    statuses: list[int] = []
    barrier = threading.Barrier(CLIENTS)

    def send() -> None:
        barrier.wait(timeout=30)
        status, answer = post(gateway, "PutRecords", cbor_large, content_type=CBOR_TYPE)
        assert answer["__type"] in ("ResourceNotFoundException", "ServiceUnavailable"), answer
        statuses.append(status)

    peak = 0
    threads = [threading.Thread(target=send) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, rss_bytes(gateway.pid))
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    assert len(statuses) == CLIENTS and set(statuses) <= {400, 503}
    assert peak - before < 128 * 1024 * 1024  # the 64 MiB admitted, and their decoding
    time.sleep(1.5)  # the trim after a burst is rate-limited to once a second
    post(gateway, "ListStreams", {})  # a small request: no body to reserve, nothing to hold
    after = rss_bytes(gateway.pid)
    assert after - before < 16 * 1024 * 1024, (before, peak, after)
