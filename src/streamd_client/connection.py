"""One multiplexed TCP connection to a streamd server (docs/protocol.md), on anyio.

How it works: a connection runs two tasks in its own task group. The *reader* feeds received
bytes to the sans-I/O ``wire.FrameDecoder`` and completes each pending request by its id. The
*writer* is the only task that ever sends: requests put their encoded frame on a bounded queue
and the writer joins everything queued into one ``send`` (write coalescing: a busy connection
makes few syscalls, an idle one adds no delay). Because request tasks never touch the socket,
cancelling a request (or timing it out) cannot leave half a frame on the wire; its answer, if it
comes, is dropped. Only the writer can be interrupted mid-frame (a stalled send times out), and
that marks the connection broken.

Why this boundary: like httpcore's ``map_exceptions``, foreign exceptions (``OSError``, anyio's
``BrokenResourceError``/``EndOfStream``/``ClosedResourceError``, a ``ProtocolError`` from the
codec) are translated here and only here: once broken, every pending and later request fails
with ``ConnectionLostError`` (retryable; the cause is kept in ``__cause__``). A connection is
never repaired; the Client opens a new one on its next call.

Limits: ``requests_in_flight_max`` (a semaphore; waiting for a slot counts against the request's
timeout), ``request_timeout_s`` for each request, the peer's ``frame_bytes_max`` for each frame.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from . import auth, wire
from .errors import (
    ConnectionLostError,
    InvalidArgumentError,
    LimitExceededError,
    ProtocolError,
    RequestTimeoutError,
    RequestTooLargeError,
    StreamdError,
    TlsHandshakeError,
    TlsRequiredError,
    UnauthenticatedError,
    UnsupportedVersionError,
    error_from_wire,
)
from .results import field
from .security import Security

CLIENT_NAME: Final = "streamd-client/0.1"
REQUESTS_IN_FLIGHT_MAX_DEFAULT: Final = 1024  # the server's per-connection bound
RECEIVE_BYTES_MAX: Final = 256 * 1024  # per receive call
ANSWER_HEAD_BYTES_MAX: Final = 80  # the first bytes received, kept to say what the peer speaks
SEND_COALESCE_BYTES_MAX: Final = 1024 * 1024  # stop joining queued frames past this
FRAME_BYTES_MAX_CEILING: Final = 64 * 1024 * 1024  # never trust a larger announced limit
CLOSE_TIMEOUT_S: Final = 5.0
BOOTSTRAP_ADDRESSES_MAX: Final = 64  # addresses in one "h1:7070,h2:7070" list

# The foreign exceptions a stream may raise once the peer or the network fails.
_FOREIGN_ERRORS: Final = (
    OSError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    anyio.ClosedResourceError,
)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6addr]:port"``). Raises InvalidArgumentError."""
    scheme, sep, _ = endpoint.partition("://")
    if sep:
        raise InvalidArgumentError(
            f"endpoint {endpoint!r:.100} is a URL ({scheme:.20}://); the native protocol takes "
            "host:port (tls://host:port for TLS), the server's --listen address (127.0.0.1:7070 "
            "by default); http:// URLs are for its Kinesis API (boto3, aws --endpoint-url)"
        )
    host, sep, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"endpoint must look like host:port, got {endpoint!r:.100}")
    return host, int(port)


def parse_bootstrap(endpoints: str) -> tuple[str, ...]:
    """Split a bootstrap list ``"h1:7070,h2:7070"`` (one address is a list of one) into its
    addresses, each checked as ``parse_endpoint`` does; blanks around commas are ignored.

    Raises: InvalidArgumentError (an address is malformed, the list is empty or too long).
    """
    if not isinstance(endpoints, str):
        raise InvalidArgumentError(f"endpoint must be a str, got {type(endpoints).__name__}")
    addresses = tuple(part.strip() for part in endpoints.split(","))
    if not 1 <= len(addresses) <= BOOTSTRAP_ADDRESSES_MAX:
        raise InvalidArgumentError(
            f"a bootstrap list holds 1..{BOOTSTRAP_ADDRESSES_MAX} addresses, got {len(addresses)}"
        )
    for address in addresses:
        parse_endpoint(address)
    return addresses


class _Pending:
    """One request waiting for its answer. Exactly one of result/error is set before event."""

    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: dict[str, Any] = {}
        self.error: StreamdError | None = None


class Connection:
    """A multiplexed connection; open one with ``open_connection``.

    Invariant: once ``_broken`` is set it never clears, the run task group is cancelled, and
    every pending request is (or is about to be) failed with a ConnectionLostError.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        endpoint: str,
        request_timeout_s: float,
        requests_in_flight_max: int,
    ) -> None:
        assert request_timeout_s > 0 and requests_in_flight_max > 0
        self.endpoint = endpoint
        self.request_timeout_s = request_timeout_s
        self.frame_bytes_max = wire.FRAME_BYTES_MAX_DEFAULT  # the server's, from hello
        self.server_name = ""
        self.auth_scheme: str | None = None  # from hello: the server wants authenticate
        self.auth_nonce = b""  # from hello: what authenticate signs
        self.principal: str | None = None  # who the server says we are, once authenticated
        self._stream = stream
        self._decoder = wire.FrameDecoder(
            wire.FRAME_BYTES_MAX_DEFAULT, wire.ANSWER_ITEMS_MAX_DEFAULT
        )
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1  # id 0 is the server's "whole connection" error
        self._slots = anyio.Semaphore(requests_in_flight_max)
        # Twice the slots: a timed-out request frees its slot while its frame may still wait.
        self._outbox_send, self._outbox_receive = anyio.create_memory_object_stream[bytes](
            2 * requests_in_flight_max
        )
        self._broken: ConnectionLostError | None = None
        self._answer_head = b""  # the first bytes the peer sent (ANSWER_HEAD_BYTES_MAX)
        self._scope = anyio.CancelScope()
        self._finished = anyio.Event()

    @property
    def is_broken(self) -> bool:
        return self._broken is not None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read and write until the connection breaks or ``aclose``; never raises StreamdError."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    task_status.started()
                    await self._read_loop()
        finally:
            self._mark_broken(ConnectionLostError(f"connection to {self.endpoint} closed"))
            self._fail_pending()
            self._outbox_send.close()
            self._outbox_receive.close()
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await self._stream.aclose()
            self._finished.set()

    async def aclose(self) -> None:
        """Close the connection; pending requests fail with ConnectionLostError."""
        self._mark_broken(ConnectionLostError(f"connection to {self.endpoint} closed"))
        with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await self._finished.wait()

    async def hello(self, timeout_s: float) -> None:
        """The version handshake; must be the first request.

        Raises: UnsupportedVersionError, ProtocolError, ConnectionLostError, RequestTimeoutError.
        """
        answer = await self.request(
            wire.OP_HELLO,
            {"versions": list(wire.SUPPORTED_VERSIONS), "client": CLIENT_NAME},
            timeout_s=timeout_s,
        )
        version = field(answer, "version", int)
        if version not in wire.SUPPORTED_VERSIONS:
            raise UnsupportedVersionError(f"server picked protocol version {version}")
        frame_bytes_max = field(answer, "frame_bytes_max", int)
        if not 1 <= frame_bytes_max <= FRAME_BYTES_MAX_CEILING:
            raise ProtocolError(f"server frame_bytes_max {frame_bytes_max} is out of range")
        self.frame_bytes_max = frame_bytes_max
        self._decoder.frame_bytes_max = max(frame_bytes_max, wire.FRAME_BYTES_MAX_DEFAULT)
        self.server_name = str(answer.get("server", ""))
        scheme = answer.get("auth")
        if scheme is not None:
            nonce = answer.get("nonce")
            if scheme != auth.AUTH_SCHEME or not isinstance(nonce, bytes):
                raise UnsupportedVersionError(f"server wants authentication {scheme!r:.40}")
            if len(nonce) != auth.NONCE_BYTES:
                raise ProtocolError(f"server nonce is {len(nonce)} bytes")
            self.auth_scheme, self.auth_nonce = scheme, nonce

    async def authenticate(self, credentials: auth.Credentials, timeout_s: float) -> None:
        """Prove the key pair to the server (module doc of ``streamd_client.auth``); the
        secret is never sent. Raises: UnauthenticatedError (the server refused: it closes the
        connection), ConnectionLostError, RequestTimeoutError."""
        signature = auth.sign(
            credentials.secret_access_key, self.auth_nonce, credentials.access_key_id
        )
        answer = await self.request(
            wire.OP_AUTHENTICATE,
            {"access_key_id": credentials.access_key_id, "signature": signature},
            timeout_s=timeout_s,
        )
        self.principal = str(answer.get("principal", ""))

    async def request(
        self, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its answer (``timeout_s`` defaults to the request's).

        Raises: the typed error the server answered with; RequestTimeoutError;
        ConnectionLostError; RequestTooLargeError (frame over the server's frame_bytes_max);
        LimitExceededError (send queue full: the connection is stalled).
        """
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        try:
            with anyio.fail_after(timeout_s):
                async with self._slots:
                    return await self._round_trip(op, args)
        except TimeoutError:
            raise RequestTimeoutError(
                f"{op} got no answer from {self.endpoint} within {timeout_s} s"
            ) from None

    async def _round_trip(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._broken is not None:
            raise self._lost_error()
        request_id = self._next_id
        self._next_id += 1
        frame = wire.encode_message(wire.request(request_id, op, args))
        if len(frame) - 4 > self.frame_bytes_max:
            raise RequestTooLargeError(
                f"{op} request is {len(frame) - 4} bytes; server frame_bytes_max is "
                f"{self.frame_bytes_max}"
            )
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            self._enqueue(frame)
            await pending.event.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _enqueue(self, frame: bytes) -> None:
        try:
            self._outbox_send.send_nowait(frame)
        except anyio.WouldBlock:
            raise LimitExceededError(f"send queue to {self.endpoint} is full") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._lost_error() from None

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._stream.receive(RECEIVE_BYTES_MAX)
                if len(self._answer_head) < ANSWER_HEAD_BYTES_MAX:
                    self._answer_head += data[: ANSWER_HEAD_BYTES_MAX - len(self._answer_head)]
                self._decoder.receive_data(data)
                while isinstance(message := self._decoder.next_message(), dict):
                    self._dispatch(message)
        except ProtocolError as exc:
            self._mark_broken(
                ConnectionLostError(f"protocol error from {self.endpoint}: {exc.message}"), exc
            )
        except _FOREIGN_ERRORS as exc:
            self._mark_broken(ConnectionLostError(f"connection to {self.endpoint} lost"), exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = message["i"]
        if request_id == 0:  # the server gave up on the whole connection and closes it
            cause = error_from_wire(message.get("e"))
            text = f"server closed the connection: {cause.code}: {cause.message}"
            self._mark_broken(ConnectionLostError(text), cause)
            return
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return  # the request timed out or was cancelled; its answer is of no use
        result = message.get("r")
        if isinstance(result, dict):
            pending.result = result
        elif "e" in message:
            pending.error = error_from_wire(message["e"])
        else:
            pending.error = ProtocolError("answer carries neither a result map nor an error")
        pending.event.set()

    async def _write_loop(self) -> None:
        try:
            async for frame in self._outbox_receive:
                data = self._coalesce(frame)
                with anyio.fail_after(self.request_timeout_s):
                    await self._stream.send(data)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            self._mark_broken(ConnectionLostError(f"send to {self.endpoint} stalled"), exc)
        except _FOREIGN_ERRORS as exc:
            self._mark_broken(ConnectionLostError(f"connection to {self.endpoint} lost"), exc)

    def _coalesce(self, first: bytes) -> bytes:
        frames = [first]
        size = len(first)
        while size < SEND_COALESCE_BYTES_MAX:
            try:
                frame = self._outbox_receive.receive_nowait()
            except anyio.WouldBlock:
                break
            frames.append(frame)
            size += len(frame)
        return first if len(frames) == 1 else b"".join(frames)

    def http_status_line(self) -> str | None:
        """The peer's first line if it answered in HTTP (it is an HTTP server), else None."""
        if not self._answer_head.startswith(b"HTTP/"):
            return None
        line = self._answer_head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        return line.decode("ascii", "replace")

    def _mark_broken(self, error: ConnectionLostError, cause: BaseException | None = None) -> None:
        if self._broken is None:
            error.__cause__ = cause
            self._broken = error
        self._scope.cancel()

    def _lost_error(self) -> ConnectionLostError:
        """A fresh copy of the break reason (one exception object per raise keeps tracebacks)."""
        assert self._broken is not None
        error = ConnectionLostError(self._broken.message)
        error.__cause__ = self._broken.__cause__
        return error

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.error = self._lost_error()
            item.event.set()


async def open_connection(
    task_group: anyio.abc.TaskGroup,
    endpoint: str,
    *,
    connect_timeout_s: float,
    request_timeout_s: float,
    requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    security: Security | None = None,
) -> Connection:
    """Connect, start the connection's tasks in ``task_group`` and shake hands.

    ``connect_timeout_s`` bounds the TCP connect, the TLS handshake (``security.tls``), the
    hello and the authentication (``security.credentials``, when the server asks) together.
    Raises: InvalidArgumentError (endpoint), ConnectionLostError (cannot connect, or lost during
    the handshake), RequestTimeoutError, UnsupportedVersionError, ProtocolError (also when the
    peer answered in HTTP: the message says so and what to connect to), TlsHandshakeError,
    TlsRequiredError (a TLS listener and no ``tls://``), UnauthenticatedError.
    """
    host, port = parse_endpoint(endpoint)
    secure = Security() if security is None else security
    deadline = anyio.current_time() + connect_timeout_s
    try:
        with anyio.fail_after(connect_timeout_s):
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)  # TCP_NODELAY
            if secure.tls is not None:
                stream = await _tls_handshake(stream, host, endpoint, secure.tls)
    except TimeoutError:
        raise ConnectionLostError(
            f"connecting to {endpoint} took longer than {connect_timeout_s} s"
        ) from None
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to {endpoint}: {exc}") from exc
    connection = Connection(
        stream,
        endpoint=endpoint,
        request_timeout_s=request_timeout_s,
        requests_in_flight_max=requests_in_flight_max,
    )
    await task_group.start(connection.run)
    try:
        await connection.hello(max(deadline - anyio.current_time(), 0.001))
        if connection.auth_scheme is not None and secure.credentials is not None:
            await connection.authenticate(
                secure.credentials, max(deadline - anyio.current_time(), 0.001)
            )
    except StreamdError as exc:
        await connection.aclose()
        status_line = connection.http_status_line()
        if status_line is not None:  # not retryable: it will answer in HTTP every time
            raise ProtocolError(_http_peer_message(endpoint, status_line)) from exc
        said = exc.__cause__
        if isinstance(said, TlsRequiredError | UnauthenticatedError):  # the server's word
            raise type(said)(f"{endpoint}: {said.message}") from exc
        if (
            secure.tls is not None
            and isinstance(exc, ConnectionLostError)
            and not connection.server_name
        ):
            # TLS 1.3: the server checks our certificate after our side of the handshake is
            # done, so its refusal arrives as the first read (an alert, or just the close).
            raise TlsHandshakeError(
                f"TLS connection to {endpoint} closed by the server before it answered hello "
                f"({_tls_reason(exc)}): it may require a client certificate (--tls-cert/"
                "--tls-key) signed by its --tls-client-ca"
            ) from exc
        raise
    except BaseException:
        await connection.aclose()
        raise
    return connection


async def _tls_handshake(
    stream: anyio.abc.ByteStream, host: str, endpoint: str, context: ssl.SSLContext
) -> anyio.abc.ByteStream:
    """The TLS client side over ``stream``; the server's certificate and name are verified.
    Raises TlsHandshakeError saying why (its cause kept), the stream closed."""
    try:
        return await TLSStream.wrap(
            stream, hostname=host, ssl_context=context, standard_compatible=False
        )
    except ssl.SSLCertVerificationError as exc:
        await anyio.aclose_forcefully(stream)
        raise TlsHandshakeError(
            f"TLS handshake with {endpoint} failed: the server's certificate is not trusted "
            f"({exc.verify_message}); check the CA (--tls-ca) and the name connected to"
        ) from exc
    except (ssl.SSLError, *_FOREIGN_ERRORS) as exc:
        await anyio.aclose_forcefully(stream)
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise TlsHandshakeError(
            f"TLS handshake with {endpoint} failed ({reason}): is the server listening with "
            "TLS there (serve --tls-cert), and does it accept this client's certificate?"
        ) from exc


def _tls_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or cause)
        cause = cause.__cause__ or cause.__context__
    return "no alert"


def _http_peer_message(endpoint: str, status_line: str) -> str:
    return (
        f"{endpoint} answered in HTTP ({status_line!r:.60}), not in streamd's native protocol: "
        "it is an HTTP server, such as streamd's Kinesis API (--kinesis-listen, 127.0.0.1:4567 "
        "by default); connect to the server's --listen address instead (127.0.0.1:7070 by "
        "default), and use that HTTP port with boto3 or aws --endpoint-url"
    )
