"""A small async etcd v3 client over etcd's JSON gateway, on httpx (anyio: runs under trio).

Why our own: the Python etcd clients speak gRPC and run on asyncio only (or are unmaintained);
httpx runs on anyio, so under trio as well as asyncio, and etcd (3.4 and later) serves its whole
v3 API as JSON under ``/v3/``. The bodies are built and parsed in etcd_codec.py (sans-I/O);
this module only sends them.

How it behaves:

* Every unary call (range, put, deleterange, txn, lease grant/keepalive/revoke) has one overall
  deadline, ``request_timeout_s``; over it, the call raises ``MetadataUnavailableError``.
* ``endpoints`` lists the etcd members. A call goes to the current one; when connecting to it
  fails (nothing was sent, so trying elsewhere is safe) the next one is tried, each at most once
  per call. Any other transport failure is ambiguous for a write and is raised, not retried.
* httpx's exceptions and etcd's error answers never escape: they become
  ``MetadataUnavailableError`` (retryable: unreachable, timed out, no leader, ...) or the
  ``meta.errors`` types (docs/cluster.md has the table).
* A lease keepalive is one POST per renewal: the gateway answers one keepalive response for the
  one request in the body and ends the stream.
* ``watch`` opens one streaming POST; ``EtcdWatchStream.next`` reads its newline-delimited JSON
  messages, each wait bounded by an idle timeout. A stream that errs, ends or goes idle is
  dead: the caller opens a new one from the revision after the last it saw (EtcdMetaStore does).
* Bounded: response bodies and watch lines are capped (``response_bytes_max``), and so is the
  connection pool (``connections_max``; each open watch holds one connection).
"""

from __future__ import annotations

import collections
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Final, cast

import anyio
import httpx
import structlog

from streamd_client.errors import MetadataUnavailableError

from ..metrics import ETCD_REQUESTS
from . import etcd_codec as codec
from .errors import CompactedError, EtcdProtocolError, EtcdRequestError, LeaseNotFoundError

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT_S_DEFAULT: Final = 5.0
CONNECT_TIMEOUT_S_DEFAULT: Final = 2.0
RESPONSE_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
CONNECTIONS_MAX_DEFAULT: Final = 32
VERSION_MIN: Final = (3, 4)  # the first with the JSON gateway under /v3/ (not only /v3beta/)
_HEADERS: Final = {"content-type": "application/json"}
_DRAIN_STEPS_MAX: Final = 64


def endpoint_url(endpoint: str) -> str:
    """``http://HOST:PORT`` for ``HOST:PORT``, ``http://...`` or ``etcd://...``."""
    endpoint = endpoint.strip().rstrip("/")
    if endpoint.startswith("etcd://"):
        endpoint = endpoint[len("etcd://") :]
    if not endpoint.startswith(("http://", "https://")):
        endpoint = "http://" + endpoint
    return endpoint


def _https(url: str) -> str:
    return "https://" + url.removeprefix("http://").removeprefix("https://")


class _ConnectFailed(Exception):
    """Connecting to one endpoint failed (``__cause__`` says why); nothing was sent to it."""


@contextmanager
def _map_transport_errors(what: str, url: str) -> Iterator[None]:
    """httpx's exceptions onto ours, at the one boundary where they can appear."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise MetadataUnavailableError(f"etcd at {url} timed out during {what}: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise MetadataUnavailableError(f"etcd at {url} failed during {what}: {exc!r}") from exc


class EtcdClient:
    """One etcd cluster, reached through any of ``endpoints``. Close with ``aclose``.

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        response_bytes_max: int = RESPONSE_BYTES_MAX_DEFAULT,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: reach etcd over https with this context (its CA, and a client certificate
        for etcd's --client-cert-auth); http:// endpoints become https://."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [endpoint_url(e) for e in endpoints]
        if tls is not None:
            self.endpoints = [_https(e) for e in self.endpoints]
        self.request_timeout_s = request_timeout_s
        self.response_bytes_max = response_bytes_max
        self._current = 0
        # A watch's reads are bounded by its idle timeout (EtcdWatchStream.next), not by the
        # request timeout: a quiet prefix must not tear its stream down every few seconds.
        self._watch_timeout = httpx.Timeout(request_timeout_s, connect=connect_timeout_s, read=None)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=connections_max, max_keepalive_connections=connections_max
            ),
            trust_env=False,  # loopback and cluster traffic never goes through an HTTP proxy
            verify=True if tls is None else tls,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- unary calls -----------------------------------------------------------------------------

    async def version(self) -> tuple[int, int]:
        """(major, minor) of the server. Raises EtcdRequestError below 3.4."""
        data = await self._call("GET", "/version", b"")
        version = codec.decode_version(data)
        if version < VERSION_MIN:
            raise EtcdRequestError(
                f"etcd {version[0]}.{version[1]} is too old: streamd needs 3.4 or later"
            )
        return version

    async def range(
        self, key: bytes, range_end: bytes | None = None, *, limit: int = 0, revision: int = 0
    ) -> codec.RangeResponse:
        body = codec.range_request(key, range_end, limit=limit, revision=revision)
        return codec.decode_range(await self._call("POST", "/v3/kv/range", body))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """The revision of the put. Raises LeaseNotFoundError if ``lease`` is gone."""
        body = codec.put_request(codec.EtcdPut(key, value, lease))
        return codec.decode_put(await self._call("POST", "/v3/kv/put", body, lease_id=lease))

    async def delete_range(
        self, key: bytes, range_end: bytes | None = None
    ) -> codec.DeleteResponse:
        body = codec.delete_request(codec.EtcdDelete(key, range_end))
        return codec.decode_delete(await self._call("POST", "/v3/kv/deleterange", body))

    async def txn(
        self,
        compares: list[codec.EtcdCompare],
        success: list[codec.EtcdOp],
        failure: list[codec.EtcdOp] | None = None,
    ) -> codec.TxnResponse:
        body = codec.txn_request(compares, success, failure)
        leases = [op.lease for op in success if isinstance(op, codec.EtcdPut) and op.lease]
        data = await self._call("POST", "/v3/kv/txn", body, lease_id=leases[0] if leases else 0)
        return codec.decode_txn(data)

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watches from older revisions get compacted)."""
        body = codec.compaction_request(revision)
        codec.decode_put(await self._call("POST", "/v3/kv/compaction", body))

    async def lease_grant(self, ttl_s: int) -> codec.LeaseGrant:
        """A new lease; etcd may raise the TTL to its minimum."""
        body = codec.lease_grant_request(ttl_s)
        return codec.decode_lease_grant(await self._call("POST", "/v3/lease/grant", body))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew once; the lease's TTL in seconds. Raises LeaseNotFoundError if it is gone."""
        body = codec.lease_id_request(lease_id)
        data = await self._call("POST", "/v3/lease/keepalive", body, lease_id=lease_id)
        lines = codec.LineSplitter(self.response_bytes_max).feed(data + b"\n")
        if not lines:
            raise EtcdProtocolError("etcd gateway: empty keepalive answer")
        answer = codec.decode_keepalive(lines[0])
        if isinstance(answer, codec.EtcdFailure):
            raise codec.exception_for(answer, lease_id=lease_id)
        if answer <= 0:
            raise codec.exception_for(
                codec.EtcdFailure(5, "requested lease not found", 200), lease_id=lease_id
            )
        return answer

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys. Raises LeaseNotFoundError if it is gone."""
        body = codec.lease_id_request(lease_id)
        codec.decode_revoke(await self._call("POST", "/v3/lease/revoke", body, lease_id=lease_id))

    async def _call(self, method: str, path: str, body: bytes, *, lease_id: int = 0) -> bytes:
        """One request within ``request_timeout_s``, failing over on connect errors."""
        try:
            try:
                with anyio.fail_after(self.request_timeout_s):
                    data = await self._call_any_endpoint(method, path, body, lease_id)
            except TimeoutError:
                raise MetadataUnavailableError(
                    f"etcd did not answer {path} within {self.request_timeout_s} s"
                ) from None
        except Exception as exc:
            ETCD_REQUESTS.labels(path, _outcome(exc)).inc()
            raise
        ETCD_REQUESTS.labels(path, "ok").inc()
        return data

    async def _call_any_endpoint(self, method: str, path: str, body: bytes, lease_id: int) -> bytes:
        failures = []
        for _ in self.endpoints:
            url = self.endpoints[self._current] + path
            try:
                with _map_transport_errors("a request", url):
                    status, data = await self._send(method, url, body)
            except _ConnectFailed as exc:  # nothing was sent: the next endpoint may answer
                failures.append(f"{url}: {exc.__cause__!r}")
                log.warning("meta.etcd_connect_failed", url=url, error=repr(exc.__cause__)[:200])
                self._current = (self._current + 1) % len(self.endpoints)
                continue
            if status != 200:
                raise codec.exception_for(codec.decode_failure(status, data), lease_id=lease_id)
            return data
        raise MetadataUnavailableError(f"no etcd endpoint answers: {'; '.join(failures)}")

    async def _send(self, method: str, url: str, body: bytes) -> tuple[int, bytes]:
        request = self._http.build_request(method, url, content=body or None, headers=_HEADERS)
        try:
            response = await self._http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _ConnectFailed from exc
        answer = _Body(response)
        try:
            data = await answer.read_all(self.response_bytes_max)
        finally:
            with anyio.move_on_after(self.request_timeout_s, shield=True):
                await answer.close()
        return response.status_code, data

    # -- watch -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, key: bytes, range_end: bytes | None, start_revision: int
    ) -> AsyncIterator[EtcdWatchStream]:
        """A watch stream over ``[key, range_end)`` from ``start_revision``, created.

        Opening (connect, request, etcd's ``created`` answer) is bounded by
        ``request_timeout_s``. Raises CompactedError if ``start_revision`` is compacted, and
        MetadataUnavailableError if etcd cannot be reached.
        """
        url = self.endpoints[self._current] + "/v3/watch"
        body = codec.watch_create_request(key, range_end, start_revision)
        request = self._http.build_request(
            "POST", url, content=body, headers=_HEADERS, timeout=self._watch_timeout
        )
        try:
            with anyio.fail_after(self.request_timeout_s):
                with _map_transport_errors("opening a watch", url):
                    response = await self._http.send(request, stream=True)
        except (MetadataUnavailableError, TimeoutError) as exc:
            self._current = (self._current + 1) % len(self.endpoints)  # try another next time
            if isinstance(exc, TimeoutError):
                raise MetadataUnavailableError(f"etcd at {url} did not open a watch") from None
            raise
        stream = EtcdWatchStream(response, url, self.response_bytes_max)
        try:
            if response.status_code != 200:
                data = await stream.body.read_all(self.response_bytes_max)
                raise codec.exception_for(codec.decode_failure(response.status_code, data))
            await stream.wait_created(self.request_timeout_s)
            yield stream
        finally:
            with anyio.move_on_after(self.request_timeout_s, shield=True):
                await stream.aclose()


class _Body:
    """A streamed response body, read chunk by chunk and closed without leaving httpx's async
    generators suspended mid-body: trio warns (an error in our tests) about any such generator
    that is garbage collected. ``close`` closes the connection first, then steps the generators
    until the closed stream ends them (a few buffered chunks at most)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        self._done = False

    async def next_chunk(self) -> bytes | None:
        """The next chunk, None at the end of the body."""
        if self._done:
            return None
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._done = True
            return None
        except BaseException:
            self._done = True  # an exception ran through every generator and ended them
            raise

    async def read_all(self, size_bytes_max: int) -> bytes:
        chunks: list[bytes] = []
        size_bytes = 0
        while (chunk := await self.next_chunk()) is not None:
            size_bytes += len(chunk)
            if size_bytes > size_bytes_max:
                raise EtcdProtocolError(f"etcd answered more than {size_bytes_max} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        await self.response.aclose()
        for _ in range(_DRAIN_STEPS_MAX):
            try:
                if await self.next_chunk() is None:
                    return
            except Exception:  # the closed connection ended the body: what we wanted
                return


class EtcdWatchStream:
    """The messages of one open watch stream. Any error ends it (``broken`` turns true)."""

    def __init__(self, response: httpx.Response, url: str, line_bytes_max: int) -> None:
        self.url = url
        self.broken = False
        self.body = _Body(response)
        self._splitter = codec.LineSplitter(line_bytes_max)
        self._lines: collections.deque[bytes] = collections.deque()

    async def wait_created(self, timeout_s: float) -> None:
        message = await self.next(timeout_s)
        if not message.created:
            self.broken = True
            raise EtcdProtocolError("etcd gateway: the watch's first message is not 'created'")

    async def next(self, idle_timeout_s: float) -> codec.WatchMessage:
        """The next message, waiting at most ``idle_timeout_s`` for bytes to arrive.

        Raises MetadataUnavailableError when the stream ends, fails or stays silent that long,
        CompactedError (or EtcdRequestError) when etcd cancels the watch, EtcdProtocolError for
        bytes that are no watch message.
        """
        if self.broken:
            raise MetadataUnavailableError(f"the watch stream from {self.url} is closed")
        try:
            while not self._lines:
                self._lines.extend(self._splitter.feed(await self._read_chunk(idle_timeout_s)))
            message = codec.decode_watch_line(self._lines.popleft())
        except BaseException:
            self.broken = True
            raise
        if isinstance(message, codec.EtcdFailure):
            self.broken = True
            raise codec.exception_for(message)
        if message.canceled:
            self.broken = True
            raise _canceled_error(message)
        return message

    async def _read_chunk(self, idle_timeout_s: float) -> bytes:
        try:
            with anyio.fail_after(idle_timeout_s), _map_transport_errors("a watch", self.url):
                chunk = await self.body.next_chunk()
        except TimeoutError:
            raise MetadataUnavailableError(
                f"the watch stream from {self.url} was silent for {idle_timeout_s} s"
            ) from None
        if chunk is None:
            raise MetadataUnavailableError(f"etcd at {self.url} ended the watch stream")
        return chunk

    async def aclose(self) -> None:
        self.broken = True
        await self.body.close()


def _outcome(exc: Exception) -> str:
    """The metric label of a failed call."""
    for kind, label in (
        (MetadataUnavailableError, "unavailable"),
        (LeaseNotFoundError, "lease_not_found"),
        (CompactedError, "compacted"),
        (EtcdRequestError, "refused"),
    ):
        if isinstance(exc, kind):
            return label
    return "protocol"


def _canceled_error(message: codec.WatchMessage) -> Exception:
    if message.compact_revision:
        return CompactedError(
            f"etcd compacted the watch's history up to {message.compact_revision}",
            message.compact_revision,
        )
    return EtcdRequestError(f"etcd canceled the watch: {message.cancel_reason or 'no reason'}")
