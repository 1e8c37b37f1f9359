"""EtcdClient against httpx.MockTransport: failover, deadlines (virtual time), error mapping,
size bounds, and the watch stream's framing, end and idleness. The same client against a real
etcd is in tests/integration/test_etcd_client.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio

from streamd.meta import etcd_codec as codec
from streamd.meta.errors import CompactedError, EtcdProtocolError, LeaseNotFoundError
from streamd.meta.etcd_client import EtcdClient, endpoint_url
from streamd_client.errors import MetadataUnavailableError

Handler = Callable[[httpx.Request], httpx.Response]
RANGE_OK = b'{"header":{"revision":"9"},"kvs":[{"key":"YQ==","mod_revision":"9","value":"eA=="}]}'


def client(
    handler: Callable[..., object], endpoints: list[str] | None = None, **kw: float
) -> EtcdClient:
    return EtcdClient(
        endpoints or ["127.0.0.1:1"],
        transport=httpx.MockTransport(handler),
        **kw,  # type: ignore[arg-type]
    )


def test_endpoint_urls() -> None:
    assert endpoint_url("h:2379") == "http://h:2379"
    assert endpoint_url("etcd://h:2379/") == "http://h:2379"
    assert endpoint_url("https://h:2379") == "https://h:2379"


async def test_connect_failure_fails_over_to_the_next_endpoint() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=RANGE_OK)

    async with client(handler, ["down:2379", "up:2379"]) as etcd:
        answer = await etcd.range(b"a")
        await etcd.range(b"a")  # sticks with the endpoint that answered
    assert answer.kvs[0].value == b"x" and answer.revision == 9
    assert seen == ["down", "up", "up"]


async def test_every_endpoint_down_is_metadata_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with client(handler, ["a:1", "b:1"]) as etcd:
        with pytest.raises(MetadataUnavailableError, match="no etcd endpoint answers"):
            await etcd.put(b"k", b"v")


async def test_a_read_error_after_sending_is_not_retried_elsewhere() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadError("reset", request=request)

    async with client(handler, ["a:1", "b:1"]) as etcd:
        with pytest.raises(MetadataUnavailableError, match="failed during a request"):
            await etcd.put(b"k", b"v")  # may have applied: the caller decides
    assert calls == 1


async def test_every_call_has_a_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        return httpx.Response(200, content=b"{}")

    async with client(handler, request_timeout_s=2.0) as etcd:
        start = trio.current_time()
        with pytest.raises(MetadataUnavailableError, match=r"within 2\.0 s"):
            await etcd.lease_grant(2)
        assert trio.current_time() - start == pytest.approx(2.0)


async def test_error_answers_are_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/lease/keepalive":
            return httpx.Response(200, content=b'{"result":{"header":{},"ID":"5"}}\n')
        if request.url.path == "/v3/lease/revoke":
            return httpx.Response(
                404,
                content=b'{"error":"x","code":5,"message":"etcdserver: requested lease not found"}',
            )
        return httpx.Response(503, content=b'{"code":14,"message":"etcdserver: no leader"}')

    async with client(handler) as etcd:
        with pytest.raises(LeaseNotFoundError) as gone:
            await etcd.lease_keepalive(5)
        assert gone.value.lease_id == 5
        with pytest.raises(LeaseNotFoundError):
            await etcd.lease_revoke(5)
        with pytest.raises(MetadataUnavailableError, match="no leader"):
            await etcd.txn([], [codec.EtcdPut(b"k", b"v")])


async def test_answers_are_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[" + b" " * 5000 + b"]")

    async with client(handler, response_bytes_max=4096) as etcd:
        with pytest.raises(EtcdProtocolError, match="more than 4096 bytes"):
            await etcd.range(b"k")


async def test_version_below_3_4_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"etcdserver":"3.3.25","etcdcluster":"3.3.0"}')

    async with client(handler) as etcd:
        with pytest.raises(Exception, match=r"3\.3 is too old"):
            await etcd.version()


def _streaming(chunks: list[bytes], *, then_sleep_s: float = 0.0) -> Callable[..., object]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        if then_sleep_s:
            await trio.sleep(then_sleep_s)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v3/watch"
        return httpx.Response(200, content=body())

    return handler


CREATED = b'{"result":{"header":{"revision":"4"},"created":true}}\n'
EVENTS = (
    b'{"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"YQ==","mod_revision":"5"}},'
    b'{"type":"DELETE","kv":{"key":"Yg==","mod_revision":"5"}}]}}\n'
)


async def test_watch_reads_messages_split_anywhere_and_reports_the_end() -> None:
    stream_bytes = CREATED + EVENTS
    chunks = [stream_bytes[i : i + 7] for i in range(0, len(stream_bytes), 7)]
    async with client(_streaming(chunks)) as etcd, etcd.watch(b"a", b"c", 1) as watch:
        message = await watch.next(5.0)
        assert [(e.type, e.kv.key) for e in message.events] == [("put", b"a"), ("delete", b"b")]
        with pytest.raises(MetadataUnavailableError, match="ended the watch stream"):
            await watch.next(5.0)
        assert watch.broken


async def test_watch_that_stays_silent_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with client(_streaming([CREATED], then_sleep_s=3600)) as etcd:
        async with etcd.watch(b"a", None, 1) as watch:
            with pytest.raises(MetadataUnavailableError, match="silent for 30"):
                await watch.next(30.0)


async def test_watch_of_a_compacted_revision_raises_compacted() -> None:
    canceled = b'{"result":{"header":{},"canceled":true,"compact_revision":"40"}}\n'
    async with client(_streaming([CREATED, canceled])) as etcd:
        with pytest.raises(CompactedError) as info:
            async with etcd.watch(b"a", None, 1) as watch:
                await watch.next(5.0)
    assert info.value.compact_revision == 40


async def test_watch_error_line_is_typed() -> None:
    error = b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}\n'
    async with client(_streaming([CREATED, error])) as etcd, etcd.watch(b"a", None, 1) as watch:
        with pytest.raises(MetadataUnavailableError, match="no leader"):
            await watch.next(5.0)
