"""etcd v3 JSON gateway bodies, both ways, with no I/O (the client in etcd_client.py sends them).

etcd serves its gRPC API as JSON over HTTP (grpc-gateway) under ``/v3/`` in 3.4 and later. The
JSON is protobuf's canonical mapping, which shapes every decoder here:

* ``bytes`` fields (keys, values, range ends) are base64 strings;
* 64-bit integers (revisions, lease ids, TTLs, counts) are decimal *strings*; int32 fields
  (gRPC codes) are numbers. We accept both forms for every integer;
* a field holding its default (0, false, "", empty list) is left out: absent means default;
* an event's ``type`` is absent for PUT and ``"DELETE"`` for deletes;
* server-streaming calls (watch) answer newline-delimited JSON, one ``{"result": ...}`` or
  ``{"error": ...}`` object per line; ``LineSplitter`` cuts a byte stream into those lines.

Errors come in two shapes: unary calls answer a non-200 status with ``{"error": str, "code": int,
"message": str}`` (3.4) or ``{"code": int, "message": str, "details": []}`` (3.5+), streams put
``{"error": {"grpc_code": int, "http_code": int, "message": str}}`` on a line. Both decode to
``EtcdFailure``, which ``exception_for`` maps onto our typed errors (the table is in
docs/cluster.md). Decoders raise only ``EtcdProtocolError``, whatever the input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from streamd_client.errors import MetadataUnavailableError

from .errors import CompactedError, EtcdProtocolError, EtcdRequestError, LeaseNotFoundError

# gRPC status codes that mean "not now" rather than "never": the request may be sent again.
_GRPC_CANCELLED: Final = 1
_GRPC_DEADLINE_EXCEEDED: Final = 4
_GRPC_RESOURCE_EXHAUSTED: Final = 8
_GRPC_ABORTED: Final = 10
_GRPC_UNAVAILABLE: Final = 14
_RETRYABLE_GRPC_CODES: Final = frozenset(
    {
        _GRPC_CANCELLED,
        _GRPC_DEADLINE_EXCEEDED,
        _GRPC_RESOURCE_EXHAUSTED,
        _GRPC_ABORTED,
        _GRPC_UNAVAILABLE,
    }
)

_INT_RE: Final = re.compile(r"-?[0-9]{1,20}")

EventType = Literal["put", "delete"]
CompareTarget = Literal["MOD", "CREATE", "VERSION"]


# -- types ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EtcdKv:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int  # Invariant: create_revision <= mod_revision (both 0 only in deletes)
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResponse:
    kvs: tuple[EtcdKv, ...]
    more: bool  # a ``limit`` cut the answer short
    count: int  # keys in the range (all of them, not only those returned)
    revision: int  # the store revision the range was read at


@dataclass(frozen=True, slots=True)
class DeleteResponse:
    deleted: int
    revision: int


@dataclass(frozen=True, slots=True)
class TxnResponse:
    succeeded: bool
    revision: int  # the txn's revision if it wrote, else the store revision it was judged at


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    lease_id: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class EtcdEvent:
    type: EventType
    kv: EtcdKv  # for a delete: key and mod_revision (the delete's revision) only


@dataclass(frozen=True, slots=True)
class WatchMessage:
    revision: int  # header revision (0 in some cancel messages)
    watch_id: int
    created: bool
    canceled: bool
    compact_revision: int  # set when canceled because start_revision was compacted
    cancel_reason: str
    events: tuple[EtcdEvent, ...]

    @property
    def is_progress(self) -> bool:
        """No events and no state change: everything up to ``revision`` has been sent."""
        return not (self.events or self.created or self.canceled)


@dataclass(frozen=True, slots=True)
class EtcdFailure:
    """An error answer: gRPC status code (0 if the body had none), message, HTTP status."""

    grpc_code: int
    message: str
    http_status: int


@dataclass(frozen=True, slots=True)
class EtcdCompare:
    """``target`` of ``key`` EQUAL ``revision`` (MOD/CREATE revision or VERSION; 0: absent)."""

    key: bytes
    target: CompareTarget
    revision: int


@dataclass(frozen=True, slots=True)
class EtcdPut:
    key: bytes
    value: bytes
    lease: int = 0  # 0: no lease (a put without a lease detaches the key from any lease)


@dataclass(frozen=True, slots=True)
class EtcdDelete:
    key: bytes
    range_end: bytes | None = None  # None: this key only


EtcdOp = EtcdPut | EtcdDelete


# -- keys ----------------------------------------------------------------------------------------


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, range_end)`` every key starting with ``prefix``.

    As etcd's clientv3.GetPrefixRangeEnd: the prefix with its last byte below 0xff incremented
    and what follows dropped; ``b"\\0"`` (every key from ``key`` on) when there is no such byte.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- requests ------------------------------------------------------------------------------------


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _key_range(key: bytes, range_end: bytes | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return body


def range_request(
    key: bytes, range_end: bytes | None = None, *, limit: int = 0, revision: int = 0
) -> bytes:
    """POST /v3/kv/range. ``revision`` 0 reads the latest; ``limit`` 0 means no limit."""
    body = _key_range(key, range_end)
    if limit:
        body["limit"] = str(limit)
    if revision:
        body["revision"] = str(revision)
    return _dump(body)


def _put_body(op: EtcdPut) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(op.key), "value": b64(op.value)}
    if op.lease:
        body["lease"] = str(op.lease)
    return body


def put_request(op: EtcdPut) -> bytes:
    """POST /v3/kv/put."""
    return _dump(_put_body(op))


def delete_request(op: EtcdDelete) -> bytes:
    """POST /v3/kv/deleterange."""
    return _dump(_key_range(op.key, op.range_end))


def _op_body(op: EtcdOp) -> dict[str, Any]:
    if isinstance(op, EtcdPut):
        return {"request_put": _put_body(op)}
    return {"request_delete_range": _key_range(op.key, op.range_end)}


def _compare_body(cmp: EtcdCompare) -> dict[str, Any]:
    field = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version"}[cmp.target]
    return {
        "key": b64(cmp.key),
        "target": cmp.target,
        "result": "EQUAL",
        field: str(cmp.revision),
    }


def txn_request(
    compares: list[EtcdCompare], success: list[EtcdOp], failure: list[EtcdOp] | None = None
) -> bytes:
    """POST /v3/kv/txn: apply ``success`` if every compare holds, else ``failure``."""
    body: dict[str, Any] = {
        "compare": [_compare_body(c) for c in compares],
        "success": [_op_body(op) for op in success],
    }
    if failure:
        body["failure"] = [_op_body(op) for op in failure]
    return _dump(body)


def compaction_request(revision: int) -> bytes:
    """POST /v3/kv/compaction."""
    return _dump({"revision": str(revision)})


def lease_grant_request(ttl_s: int) -> bytes:
    """POST /v3/lease/grant (etcd picks the id)."""
    return _dump({"TTL": str(ttl_s)})


def lease_id_request(lease_id: int) -> bytes:
    """POST /v3/lease/keepalive and /v3/lease/revoke."""
    return _dump({"ID": str(lease_id)})


def watch_create_request(key: bytes, range_end: bytes | None, start_revision: int) -> bytes:
    """POST /v3/watch: events from ``start_revision`` on, with progress notifications."""
    body = _key_range(key, range_end)
    body["start_revision"] = str(start_revision)
    body["progress_notify"] = True
    return _dump({"create_request": body})


# -- field decoders ------------------------------------------------------------------------------


def _fail(message: str) -> EtcdProtocolError:
    return EtcdProtocolError(f"etcd gateway: {message}")


def _object(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(f"{what} is not a JSON object: {raw!r:.120}")
    return raw


def _field_object(body: dict[str, Any], name: str) -> dict[str, Any]:
    raw = body.get(name)
    return {} if raw is None else _object(raw, name)


def _int(body: dict[str, Any], name: str) -> int:
    raw = body.get(name)
    if raw is None:
        return 0
    if isinstance(raw, bool):
        raise _fail(f"{name} is a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and _INT_RE.fullmatch(raw):
        return int(raw)
    raise _fail(f"{name} is not an integer: {raw!r:.60}")


def _bool(body: dict[str, Any], name: str) -> bool:
    raw = body.get(name)
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise _fail(f"{name} is not a boolean: {raw!r:.60}")
    return raw


def _str(body: dict[str, Any], name: str) -> str:
    raw = body.get(name)
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise _fail(f"{name} is not a string: {raw!r:.60}")
    return raw


def _bytes(body: dict[str, Any], name: str) -> bytes:
    raw = _str(body, name)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(f"{name} is not base64: {raw!r:.60}") from None


def _list(body: dict[str, Any], name: str) -> list[Any]:
    raw = body.get(name)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _fail(f"{name} is not a list: {raw!r:.60}")
    return raw


def _revision(body: dict[str, Any]) -> int:
    return _int(_field_object(body, "header"), "revision")


def _kv(raw: Any) -> EtcdKv:
    body = _object(raw, "kv")
    return EtcdKv(
        key=_bytes(body, "key"),
        value=_bytes(body, "value"),
        create_revision=_int(body, "create_revision"),
        mod_revision=_int(body, "mod_revision"),
        version=_int(body, "version"),
        lease=_int(body, "lease"),
    )


def _event(raw: Any) -> EtcdEvent:
    body = _object(raw, "event")
    kind = _str(body, "type")
    if kind not in ("", "PUT", "DELETE"):
        raise _fail(f"unknown event type {kind!r:.40}")
    return EtcdEvent("delete" if kind == "DELETE" else "put", _kv(body.get("kv", {})))


def _parse(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise _fail(f"not JSON: {data[:120]!r}") from None
    return _object(parsed, "body")


# -- response decoders ---------------------------------------------------------------------------


def decode_range(data: bytes) -> RangeResponse:
    body = _parse(data)
    return RangeResponse(
        kvs=tuple(_kv(kv) for kv in _list(body, "kvs")),
        more=_bool(body, "more"),
        count=_int(body, "count"),
        revision=_revision(body),
    )


def decode_put(data: bytes) -> int:
    """The revision of the put."""
    return _revision(_parse(data))


def decode_delete(data: bytes) -> DeleteResponse:
    body = _parse(data)
    return DeleteResponse(deleted=_int(body, "deleted"), revision=_revision(body))


def decode_txn(data: bytes) -> TxnResponse:
    body = _parse(data)
    return TxnResponse(succeeded=_bool(body, "succeeded"), revision=_revision(body))


def decode_lease_grant(data: bytes) -> LeaseGrant:
    body = _parse(data)
    if _str(body, "error"):
        raise _fail(f"lease grant refused: {_str(body, 'error')!r:.120}")
    lease = LeaseGrant(lease_id=_int(body, "ID"), ttl_s=_int(body, "TTL"))
    if lease.lease_id <= 0 or lease.ttl_s <= 0:
        raise _fail(f"lease grant without id or TTL: {data[:120]!r}")
    return lease


def decode_keepalive(data: bytes) -> int | EtcdFailure:
    """The lease's new TTL in seconds (0: the lease is gone), or the stream's error line."""
    body = _parse(data)
    if "error" in body:
        return _stream_failure(body)
    return _int(_field_object(body, "result"), "TTL")


def decode_version(data: bytes) -> tuple[int, int]:
    """(major, minor) of the etcd server, from GET /version."""
    version = _str(_parse(data), "etcdserver")
    match = re.match(r"(\d+)\.(\d+)\.", version)
    if match is None:
        raise _fail(f"unknown etcd version {version!r:.40}")
    return int(match.group(1)), int(match.group(2))


def decode_revoke(data: bytes) -> int:
    return _revision(_parse(data))


def decode_watch_line(line: bytes) -> WatchMessage | EtcdFailure:
    """One line of a watch stream: a message, or the error etcd ended the stream with."""
    body = _parse(line)
    if "error" in body:
        return _stream_failure(body)
    result = _field_object(body, "result")
    return WatchMessage(
        revision=_revision(result),
        watch_id=_int(result, "watch_id"),
        created=_bool(result, "created"),
        canceled=_bool(result, "canceled"),
        compact_revision=_int(result, "compact_revision"),
        cancel_reason=_str(result, "cancel_reason"),
        events=tuple(_event(e) for e in _list(result, "events")),
    )


def _stream_failure(body: dict[str, Any]) -> EtcdFailure:
    error = _field_object(body, "error")
    return EtcdFailure(
        grpc_code=_int(error, "grpc_code"),
        message=_str(error, "message"),
        http_status=_int(error, "http_code"),
    )


def decode_failure(http_status: int, data: bytes) -> EtcdFailure:
    """A non-200 answer of a unary call, whatever its body (it may not even be JSON)."""
    try:
        body = _parse(data)
        if isinstance(body.get("error"), dict):
            return _stream_failure(body)
        message = _str(body, "message") or _str(body, "error")
        return EtcdFailure(_int(body, "code"), message, http_status)
    except EtcdProtocolError:
        text = data[:200].decode("utf-8", "replace").strip()
        return EtcdFailure(0, text or f"HTTP {http_status}", http_status)


def exception_for(failure: EtcdFailure, *, lease_id: int = 0) -> Exception:
    """Our typed error for an etcd failure (docs/cluster.md has the table)."""
    text = f"etcd: {failure.message or 'no message'} (gRPC code {failure.grpc_code})"
    if failure.grpc_code in _RETRYABLE_GRPC_CODES:
        return MetadataUnavailableError(text)
    if "lease not found" in failure.message:
        return LeaseNotFoundError(lease_id)
    if "compacted" in failure.message:
        return CompactedError(text, 0)
    if failure.grpc_code == 0 and failure.http_status >= 500:
        return MetadataUnavailableError(f"etcd: HTTP {failure.http_status}: {failure.message}")
    return EtcdRequestError(text, failure.grpc_code)


# -- streams -------------------------------------------------------------------------------------


class LineSplitter:
    """Cuts a byte stream into newline-delimited lines, none longer than ``line_bytes_max``."""

    def __init__(self, line_bytes_max: int) -> None:
        self.line_bytes_max = line_bytes_max
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete non-blank lines ``data`` finishes. Raises EtcdProtocolError if a line
        grows beyond ``line_bytes_max``."""
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > self.line_bytes_max:
            raise _fail(f"a stream line is longer than {self.line_bytes_max} bytes")
        self._buffer = rest
        out = []
        for line in lines:
            if len(line) > self.line_bytes_max:
                raise _fail(f"a stream line is longer than {self.line_bytes_max} bytes")
            if line.strip():
                out.append(bytes(line))
        return out

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line (non-zero when a stream ends mid-line)."""
        return len(self._buffer)
