"""The etcd JSON gateway codec: golden request bodies, answers as etcd 3.4 and 3.5 send them,
the defaults-are-omitted rule, the line splitter whole and byte by byte, and a fuzz target (any
input decodes or raises EtcdProtocolError, nothing else)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.meta import etcd_codec as codec
from streamd.meta.errors import (
    CompactedError,
    EtcdProtocolError,
    EtcdRequestError,
    LeaseNotFoundError,
)
from streamd_client.errors import MetadataUnavailableError

HEADER = (
    '"header":{"cluster_id":"15118495548433857066","member_id":"1","revision":"7","raft_term":"2"}'
)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a/", b"a0"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_prefix_range_end_as_clientv3(prefix: bytes, end: bytes) -> None:
    assert codec.prefix_range_end(prefix) == end


def test_request_bodies_are_golden() -> None:
    assert codec.range_request(b"a/", b"a0", limit=10, revision=5) == (
        b'{"key":"YS8=","range_end":"YTA=","limit":"10","revision":"5"}'
    )
    assert codec.range_request(b"k") == b'{"key":"aw=="}'
    assert codec.put_request(codec.EtcdPut(b"k", b"v", lease=9)) == (
        b'{"key":"aw==","value":"dg==","lease":"9"}'
    )
    assert codec.txn_request(
        [codec.EtcdCompare(b"k", "MOD", 0), codec.EtcdCompare(b"c", "CREATE", 4)],
        [codec.EtcdPut(b"k", b""), codec.EtcdDelete(b"p/", b"p0")],
    ) == (
        b'{"compare":[{"key":"aw==","target":"MOD","result":"EQUAL","mod_revision":"0"},'
        b'{"key":"Yw==","target":"CREATE","result":"EQUAL","create_revision":"4"}],'
        b'"success":[{"request_put":{"key":"aw==","value":""}},'
        b'{"request_delete_range":{"key":"cC8=","range_end":"cDA="}}]}'
    )
    assert codec.lease_grant_request(2) == b'{"TTL":"2"}'
    assert codec.lease_id_request(2**63 - 1) == b'{"ID":"9223372036854775807"}'
    assert codec.watch_create_request(b"a", None, 3) == (
        b'{"create_request":{"key":"YQ==","start_revision":"3","progress_notify":true}}'
    )


def test_range_answer_of_etcd_3_4() -> None:
    body = (
        "{" + HEADER + ',"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3",'
        '"version":"2","value":"YmFy","lease":"77"}],"count":"1"}'
    ).encode()
    answer = codec.decode_range(body)
    assert answer == codec.RangeResponse(
        kvs=(codec.EtcdKv(b"foo", b"bar", 2, 3, 2, 77),), more=False, count=1, revision=7
    )


def test_omitted_fields_are_their_defaults() -> None:
    # An empty value, no lease, no kvs, no "succeeded": etcd leaves every default out.
    answer = codec.decode_range(
        (
            "{" + HEADER + ',"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2",'
            '"version":"1"}],"count":"1","more":true}'
        ).encode()
    )
    assert answer.kvs[0].value == b"" and answer.kvs[0].lease == 0 and answer.more
    assert codec.decode_range(("{" + HEADER + "}").encode()).kvs == ()
    assert codec.decode_txn(("{" + HEADER + "}").encode()) == codec.TxnResponse(False, 7)
    assert codec.decode_txn(b"{}") == codec.TxnResponse(False, 0)


def test_numbers_may_be_json_numbers_too() -> None:
    # 3.5's grpc-gateway v2 keeps int64 as strings but int32 (codes) as numbers; accept both.
    answer = codec.decode_txn(b'{"header":{"revision":12},"succeeded":true}')
    assert answer == codec.TxnResponse(True, 12)


def test_lease_answers() -> None:
    grant = codec.decode_lease_grant(
        ("{" + HEADER + ',"ID":"4111120412406228745","TTL":"2"}').encode()
    )
    assert grant == codec.LeaseGrant(4111120412406228745, 2)
    assert codec.decode_keepalive(('{"result":{' + HEADER + ',"ID":"1","TTL":"2"}}').encode()) == 2
    # A keepalive of a lease that is gone answers no TTL at all: 0.
    assert codec.decode_keepalive(('{"result":{' + HEADER + ',"ID":"123"}}').encode()) == 0
    with pytest.raises(EtcdProtocolError):
        codec.decode_lease_grant(b'{"error":"etcdserver: lease TTL too large"}')


def test_watch_lines_of_etcd_3_4() -> None:
    created = codec.decode_watch_line(('{"result":{' + HEADER + ',"created":true}}').encode())
    assert isinstance(created, codec.WatchMessage) and created.created and not created.is_progress
    events = codec.decode_watch_line(
        (
            '{"result":{' + HEADER + ',"events":[{"kv":{"key":"YQ==","create_revision":"3",'
            '"mod_revision":"3","version":"1"}},{"type":"DELETE","kv":{"key":"Yg==",'
            '"mod_revision":"4"}}]}}'
        ).encode()
    )
    assert isinstance(events, codec.WatchMessage)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events.events] == [
        ("put", b"a", 3),
        ("delete", b"b", 4),
    ]
    compacted = codec.decode_watch_line(
        b'{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"3"}}'
    )
    assert isinstance(compacted, codec.WatchMessage)
    assert compacted.canceled and compacted.compact_revision == 3 and compacted.revision == 0
    progress = codec.decode_watch_line(('{"result":{' + HEADER + "}}").encode())
    assert isinstance(progress, codec.WatchMessage) and progress.is_progress


def test_stream_error_line() -> None:
    failure = codec.decode_watch_line(
        b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader",'
        b'"http_status":"Service Unavailable"}}'
    )
    assert failure == codec.EtcdFailure(14, "etcdserver: no leader", 503)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # 3.4 (grpc-gateway v1) unary error shape
        (
            404,
            b'{"error":"etcdserver: requested lease not found","code":5,'
            b'"message":"etcdserver: requested lease not found"}',
            LeaseNotFoundError,
        ),
        (
            400,
            b'{"error":"etcdserver: too many operations in txn request","code":3,'
            b'"message":"etcdserver: too many operations in txn request"}',
            EtcdRequestError,
        ),
        (
            400,
            b'{"error":"etcdserver: mvcc: required revision has been compacted","code":11,'
            b'"message":"etcdserver: mvcc: required revision has been compacted"}',
            CompactedError,
        ),
        (
            503,
            b'{"error":"etcdserver: request timed out","code":14,'
            b'"message":"etcdserver: request timed out"}',
            MetadataUnavailableError,
        ),
        # 3.5+ (grpc-gateway v2) shape
        (
            503,
            b'{"code":14,"message":"etcdserver: leader changed","details":[]}',
            MetadataUnavailableError,
        ),
        (
            429,
            b'{"code":8,"message":"etcdserver: too many requests","details":[]}',
            MetadataUnavailableError,
        ),
        # not etcd at all: a proxy's HTML page, an empty body
        (502, b"<html>Bad Gateway</html>", MetadataUnavailableError),
        (404, b"404 page not found", EtcdRequestError),
        (500, b"", MetadataUnavailableError),
    ],
)
def test_error_answers_map_onto_typed_errors(
    status: int, body: bytes, expected: type[Exception]
) -> None:
    error = codec.exception_for(codec.decode_failure(status, body), lease_id=0x2A)
    assert type(error) is expected
    if isinstance(error, LeaseNotFoundError):
        assert error.lease_id == 0x2A


def test_version() -> None:
    assert codec.decode_version(b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}') == (3, 4)
    assert codec.decode_version(b'{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}') == (3, 5)
    with pytest.raises(EtcdProtocolError):
        codec.decode_version(b'{"version":"x"}')


STREAM = (
    b'{"result":{"created":true}}\n'
    b"\n"
    b'{"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"YQ==","mod_revision":"5"}}]}}\n'
    b'{"result":{"header":{"revision":"6"}}}\n'
)


def test_line_splitter_whole_and_byte_by_byte() -> None:
    whole = codec.LineSplitter(1024).feed(STREAM)
    splitter = codec.LineSplitter(1024)
    one_by_one = [line for i in range(len(STREAM)) for line in splitter.feed(STREAM[i : i + 1])]
    assert whole == one_by_one and len(whole) == 3 and splitter.pending_bytes == 0
    assert [json.loads(line) for line in whole][2] == {"result": {"header": {"revision": "6"}}}


def test_line_splitter_refuses_an_endless_line() -> None:
    splitter = codec.LineSplitter(16)
    splitter.feed(b"x" * 16)
    with pytest.raises(EtcdProtocolError):
        splitter.feed(b"y")
    with pytest.raises(EtcdProtocolError):
        codec.LineSplitter(4).feed(b"12345\n")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "header",
                    "revision",
                    "kvs",
                    "key",
                    "value",
                    "mod_revision",
                    "result",
                    "events",
                    "type",
                    "kv",
                    "error",
                    "code",
                    "message",
                    "ID",
                    "TTL",
                    "created",
                    "canceled",
                    "succeeded",
                    "count",
                    "more",
                    "grpc_code",
                    "etcdserver",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)

_DECODERS: list[Any] = [
    codec.decode_range,
    codec.decode_put,
    codec.decode_delete,
    codec.decode_txn,
    codec.decode_lease_grant,
    codec.decode_keepalive,
    codec.decode_revoke,
    codec.decode_watch_line,
    codec.decode_version,
]


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=64), _json.map(lambda v: json.dumps(v).encode())))
def test_decoders_only_raise_etcd_protocol_error(data: bytes) -> None:
    for decode in _DECODERS:
        try:
            decode(data)
        except EtcdProtocolError:
            pass
    assert isinstance(codec.decode_failure(500, data), codec.EtcdFailure)
