"""One Kinesis request to one answer: protocol, signature, operation, errors. No sockets here.

``Dispatcher.answer`` takes a whole request (method, target, headers, body) and returns a
``Reply``: status, headers and either a body or a ``Streaming`` event stream. Every failure
becomes the error body the SDKs parse (``__type`` and ``message`` in the request's protocol,
plus the ``x-amzn-ErrorType`` header); an unexpected exception becomes
InternalFailureException (500) and is logged with its traceback; the connection is never the
one to pay for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import structlog
import trio

from streamd_client.errors import StreamdError
from streamd_client.summary import summary

from ...security.guard import ANONYMOUS, Guard, audit
from . import metrics
from .access import audit_done, authorize
from .codec import (
    CodecError,
    InvalidTextError,
    Protocol,
    decode_request,
    encode_error,
    encode_response,
    operation_of,
    protocol_of,
)
from .decoding import BodyDecoder
from .errors import (
    INTERNAL_FAILURE,
    SERIALIZATION,
    SERVICE_UNAVAILABLE,
    UNKNOWN_OPERATION,
    VALIDATION,
    kinesis_error_of,
    unsupported_operation,
)
from .operations import OPERATIONS, UNSUPPORTED
from .records import NONE_FREE_OPERATIONS
from .sigv4 import SignatureError, verify
from .types import GatewayContext, KinesisError, Operation, Streaming

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    streaming: Streaming | None = None
    operation: str = "unknown"
    outcome: str = "ok"
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: Sequence[tuple[str, str]]  # lowercase names
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class Dispatcher:
    def __init__(
        self,
        ctx: GatewayContext,
        credentials: Mapping[str, str],
        operation_timeout_s: float,
        decoder: BodyDecoder | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.ctx = ctx
        self.credentials = dict(credentials)
        # With a guard holding any key pair, its table (re-read on SIGHUP) signs and authorizes.
        self.guard = guard if guard is not None and guard.enabled else None
        self.operation_timeout_s = operation_timeout_s
        self.decoder = decoder  # None: every body is decoded inline (tests, small embeddings)

    async def answer(self, request: Request) -> Reply:
        started = time.perf_counter()
        protocol = protocol_of(request.header("content-type")) or Protocol.JSON
        name = operation_of(request.header("x-amz-target"))
        label = name if name in OPERATIONS or name in UNSUPPORTED else "unknown"
        try:
            reply = await self._answer(request, protocol, name)
        except KinesisError as exc:
            reply = error_reply(protocol, exc.type_name, exc.message, exc.status)
        except StreamdError as exc:
            mapped = kinesis_error_of(exc)
            reply = error_reply(protocol, mapped.type_name, mapped.message, mapped.status)
        except Exception as exc:
            log.exception("kinesis.internal_error", operation=name)
            reply = error_reply(
                protocol,
                INTERNAL_FAILURE,
                f"internal error: {type(exc).__name__}: {summary(str(exc), 200)}",
                500,
            )
        reply.operation, reply.started = label, started
        metrics.REQUESTS.labels(label, reply.outcome).inc()
        metrics.LATENCY.labels(label).observe(time.perf_counter() - started)
        if reply.status >= 500:
            log.warning(
                "kinesis.request_failed", operation=name, status=reply.status, error=reply.outcome
            )
        return reply

    async def _answer(self, request: Request, protocol: Protocol, name: str | None) -> Reply:
        if request.method != "POST":
            raise KinesisError(UNKNOWN_OPERATION, f"method {request.method} is not supported", 405)
        if protocol_of(request.header("content-type")) is None:
            raise KinesisError(
                SERIALIZATION,
                f"Content-Type {summary(request.header('content-type'), 80)} is not supported; use "
                f"{Protocol.JSON.value} or {Protocol.CBOR.value}",
            )
        principal = None
        if self.guard is not None:
            key_id = self._check_signature(request, self.guard.signing_secrets())
            principal = self.guard.principal_of_key(key_id)
        elif self.credentials:
            self._check_signature(request, self.credentials)
        if name is None:
            target = request.header("x-amz-target")
            raise KinesisError(
                UNKNOWN_OPERATION,
                f"X-Amz-Target {summary(target, 120)} names no Kinesis_20131202 operation",
            )
        operation = OPERATIONS.get(name)
        if operation is None:
            if name in UNSUPPORTED:
                raise unsupported_operation(name)
            raise KinesisError(UNKNOWN_OPERATION, f"unknown operation {name}")
        try:
            if self.decoder is None:
                body = decode_request(protocol, request.body)
            else:  # large bodies off the event loop (decoding.py)
                body = await self.decoder.decode(protocol, request.body)
        except InvalidTextError as exc:
            raise KinesisError(VALIDATION, str(exc)) from None
        except CodecError as exc:
            raise KinesisError(SERIALIZATION, str(exc)) from None
        if self.guard is None:
            return await self._run(request, protocol, name, operation, body)
        action, resource = authorize(self.guard, principal, self.ctx, name, body, peer="")
        outcome = "error"
        try:
            reply = await self._run(request, protocol, name, operation, body)
            outcome = "ok"
            return reply
        except (KinesisError, StreamdError) as exc:
            outcome = exc.type_name if isinstance(exc, KinesisError) else exc.code
            raise
        finally:
            audit_done(principal, action, resource, outcome)

    async def _run(
        self,
        request: Request,
        protocol: Protocol,
        name: str,
        operation: Operation,
        body: dict[str, Any],
    ) -> Reply:
        result: dict[str, Any] | Streaming | None = None
        ctx = self.ctx
        if name in PROTOCOL_AWARE:  # event streams encode their events in the request's protocol
            ctx = replace(ctx, extra={**ctx.extra, "protocol": protocol})
        with trio.move_on_after(self.operation_timeout_s):
            result = await operation(ctx, body)
        if result is None:
            raise KinesisError(
                SERVICE_UNAVAILABLE, f"{name} took longer than {self.operation_timeout_s} s", 503
            )
        if isinstance(result, Streaming):
            return Reply(200, _base_headers(result.content_type), streaming=result)
        payload = encode_response(protocol, result, none_free=name in NONE_FREE_OPERATIONS)
        return Reply(200, _base_headers(protocol.value), payload)

    def _check_signature(self, request: Request, credentials: Mapping[str, str]) -> str:
        """The access key id that signed the request. Raises KinesisError."""
        try:
            return verify(
                method=request.method,
                target=request.target,
                headers=request.headers,
                body=request.body,
                credentials=credentials,
                region=self.ctx.region,
                now=datetime.now(UTC),
            )
        except SignatureError as exc:
            log.info("kinesis.signature_refused", error=exc.type_name, reason=exc.message[:200])
            audit(ANONYMOUS, "authenticate", "*", exc.type_name, protocol="kinesis", peer="")
            raise KinesisError(exc.type_name, exc.message, exc.status) from None


# Operations that read ``ctx.extra["protocol"]`` (the request's body protocol).
PROTOCOL_AWARE: Final = frozenset({"SubscribeToShard"})


def _base_headers(content_type: str) -> list[tuple[str, str]]:
    request_id = str(uuid.uuid4())
    return [
        ("content-type", content_type),
        ("x-amzn-requestid", request_id),
        ("x-amz-id-2", request_id),
    ]


def error_reply(protocol: Protocol, type_name: str, message: str, status: int) -> Reply:
    """The answer for an error: body and headers as the SDKs parse them."""
    headers = _base_headers(protocol.value)
    headers.append(("x-amzn-errortype", f"{type_name}:"))
    body = encode_error(protocol, type_name, message)
    return Reply(status, headers, body, outcome=type_name)
