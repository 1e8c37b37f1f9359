"""The Kinesis gateway's sans-I/O parts: CBOR, request/response codecs (checked against
botocore's own parsers), error mapping, shard iterators and SigV4 (against botocore's signer)."""

# ruff: noqa: E501  (tables of request cases read best one per line)

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import ServiceModel
from botocore.parsers import JSONParser
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.frontends.kinesis import cbor
from streamd.frontends.kinesis.codec import (
    CodecError,
    Protocol,
    decode_request,
    encode_error,
    encode_response,
    operation_of,
    protocol_of,
)
from streamd.frontends.kinesis.errors import kinesis_error_of, kinesis_name_of
from streamd.frontends.kinesis.iterators import (
    IteratorError,
    IteratorExpiredError,
    ShardIterator,
    decode_iterator,
    encode_iterator,
)
from streamd.frontends.kinesis.sigv4 import SignatureError, signing_key, verify
from streamd_client.errors import ERRORS_BY_CODE, StreamNotFoundError, ThrottledError

KINESIS_ERROR_NAMES = {
    "ResourceNotFoundException",
    "ResourceInUseException",
    "InvalidArgumentException",
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
    "ValidationException",
    "UnknownOperationException",
    "InternalFailureException",
    "ServiceUnavailable",
    "AccessDeniedException",  # in Kinesis' model: a policy refused the request
    "UnrecognizedClientException",  # AWS' common error for an unknown access key
}


def kinesis_model() -> ServiceModel:
    loader = boto3.session.Session()._session.get_component("data_loader")
    return ServiceModel(loader.load_service_model("kinesis", "service-2"), "kinesis")


# -- CBOR ----------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=64),
    st.text(max_size=32),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_cbor_round_trips(value: Any) -> None:
    assert cbor.loads(cbor.dumps(value)) == value


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_cbor_decoder_raises_only_its_error(data: bytes) -> None:
    try:
        cbor.loads(data)
    except cbor.CborError:
        pass


@given(values)
def test_cbor_decoder_rejects_every_truncation(value: Any) -> None:
    encoded = cbor.dumps(value)
    for cut in range(len(encoded)):
        with pytest.raises(cbor.CborError):
            cbor.loads(encoded[:cut])


def test_cbor_datetimes_are_tag_1_epoch_millis() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    encoded = cbor.dumps({"T": when})
    assert b"\xc1\x1b" in encoded
    assert cbor.loads(encoded) == {"T": cbor.EpochTag(1735787045678)}


def test_cbor_refuses_deep_nesting_and_other_tags() -> None:
    with pytest.raises(cbor.CborError):
        cbor.loads(b"\x81" * 1000 + b"\x00")
    with pytest.raises(cbor.CborError):
        cbor.loads(b"\xc2\x41\x01")  # tag 2 (bignum)
    with pytest.raises(cbor.CborError):
        cbor.loads(b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff")  # a list claiming 2**64 items


# -- request and response bodies -----------------------------------------------------------------


def test_json_request_blobs_and_timestamps() -> None:
    body = json.dumps(
        {
            "Records": [{"Data": base64.b64encode(b"\x00\x01").decode(), "PartitionKey": "k"}],
            "Timestamp": 1700000000.5,
            "ShardFilter": {"Type": "AT_TIMESTAMP", "Timestamp": 1700000000123},
        }
    ).encode()
    decoded = decode_request(Protocol.JSON, body)
    assert decoded["Records"][0]["Data"] == b"\x00\x01"
    assert decoded["Timestamp"] == datetime.fromtimestamp(1700000000.5, UTC)
    # Large numbers can only be milliseconds (the Java SDK's convention).
    assert decoded["ShardFilter"]["Timestamp"] == datetime.fromtimestamp(1700000000.123, UTC)
    assert decode_request(Protocol.JSON, b"") == {}


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{", b'{"Data": "not base64!"}', b'{"Timestamp": "yesterday"}', b"\xff",
     b'{"Timestamp": -5}', b'{"Data": 7}', b"1" * 5000],
)  # fmt: skip
def test_json_request_errors_are_codec_errors(body: bytes) -> None:
    with pytest.raises(CodecError):
        decode_request(Protocol.JSON, body)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_request_decoders_raise_only_codec_errors(data: bytes) -> None:
    for protocol in Protocol:
        try:
            decode_request(protocol, data)
        except CodecError:
            pass


def test_headers_name_protocol_and_operation() -> None:
    assert protocol_of("application/x-amz-json-1.1; charset=utf-8") is Protocol.JSON
    assert protocol_of("application/x-amz-cbor-1.1") is Protocol.CBOR
    assert protocol_of("text/html") is None and protocol_of(None) is None
    assert operation_of("Kinesis_20131202.PutRecord") == "PutRecord"
    assert operation_of("DynamoDB_20120810.PutItem") is None
    assert operation_of("Kinesis_20131202.Put Record") is None


def test_responses_parse_with_botocores_json_parser() -> None:
    model = kinesis_model()
    body = encode_response(
        Protocol.JSON,
        {
            "Records": [
                {
                    "SequenceNumber": "1",
                    "ApproximateArrivalTimestamp": datetime(2025, 1, 1, tzinfo=UTC),
                    "Data": b"\xff\x00",
                    "PartitionKey": "k",
                }
            ],
            "NextShardIterator": None,
            "MillisBehindLatest": 0,
        },
    )
    parsed = JSONParser().parse(
        {"status_code": 200, "headers": {}, "body": body},
        model.operation_model("GetRecords").output_shape,
    )
    record = parsed["Records"][0]
    assert record["Data"] == b"\xff\x00"
    assert record["ApproximateArrivalTimestamp"] == datetime(2025, 1, 1, tzinfo=UTC)
    assert "NextShardIterator" not in parsed


@pytest.mark.parametrize("protocol", list(Protocol))
def test_errors_parse_as_the_sdks_do(protocol: Protocol) -> None:
    body = encode_error(protocol, "ResourceNotFoundException", "Stream s not found.")
    if protocol is Protocol.JSON:
        parsed = JSONParser().parse(
            {"status_code": 400, "headers": {}, "body": body},
            kinesis_model().operation_model("DescribeStream").output_shape,
        )
        assert parsed["Error"] == {
            "Code": "ResourceNotFoundException",
            "Message": "Stream s not found.",
        }
    else:
        assert cbor.loads(body) == {
            "__type": "ResourceNotFoundException",
            "message": "Stream s not found.",
        }


def test_every_streamd_error_code_has_a_kinesis_name() -> None:
    for code, cls in ERRORS_BY_CODE.items():
        name, status = kinesis_name_of(cls("m"))
        assert name in KINESIS_ERROR_NAMES, code
        assert status in (400, 500, 503), code
    assert kinesis_error_of(StreamNotFoundError("gone")).type_name == "ResourceNotFoundException"
    throttled = kinesis_error_of(ThrottledError("slow down"))
    assert (throttled.type_name, throttled.status) == (
        "ProvisionedThroughputExceededException",
        400,
    )


# -- iterators -----------------------------------------------------------------------------------

KEY = b"k" * 32
IT = ShardIterator("orders", "abcdef0123456789", 7, 12345, 1_700_000_000_000)


def test_iterator_round_trip_and_expiry() -> None:
    token = encode_iterator(KEY, IT)
    assert decode_iterator(KEY, token, IT.issued_ms + 299_000) == IT
    with pytest.raises(IteratorExpiredError):
        decode_iterator(KEY, token, IT.issued_ms + 301_000)


def test_iterator_tampering_is_detected() -> None:
    raw = bytearray(base64.urlsafe_b64decode(encode_iterator(KEY, IT)))
    for i in range(len(raw)):
        forged = bytearray(raw)
        forged[i] ^= 0x01
        with pytest.raises(IteratorError):
            decode_iterator(KEY, base64.urlsafe_b64encode(forged).decode(), IT.issued_ms)
    with pytest.raises(IteratorError):
        decode_iterator(b"x" * 32, encode_iterator(KEY, IT), IT.issued_ms)
    for garbage in ("", "!!!", "AAAA", "A" * 600):
        with pytest.raises(IteratorError):
            decode_iterator(KEY, garbage, IT.issued_ms)


# -- SigV4 ---------------------------------------------------------------------------------------

SECRETS = {"AKID": "secret/key+1"}


def signed(
    secret: str,
    body: bytes = b"{}",
    region: str = "us-east-1",
    target: str = "Kinesis_20131202.ListStreams",
    extra: dict[str, str] | None = None,
) -> AWSRequest:
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:4567/",
        data=body,
        headers={
            "X-Amz-Target": target,
            "Content-Type": "application/x-amz-json-1.1",
            **(extra or {}),
        },
    )
    SigV4Auth(Credentials("AKID", secret), "kinesis", region).add_auth(request)
    return request


def headers_of(request: AWSRequest) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in request.headers.items()] + [("host", "127.0.0.1:4567")]


def check(
    request: AWSRequest,
    *,
    body: bytes | None = None,
    now: datetime | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> str:
    return verify(
        method="POST",
        target="/",
        headers=headers_of(request) if headers is None else headers,
        body=request.body if body is None else body,
        credentials=SECRETS,
        region="us-east-1",
        now=now or datetime.now(UTC),
    )


def replace_header(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in headers]


def sign_by_hand(
    headers: dict[str, str], signed_names: list[str], body: bytes, amz_date: str | None = None
) -> list[tuple[str, str]]:
    """A correct signature over only ``signed_names`` (what a hostile or sloppy signer sends)."""
    lines = [f"{name}:{headers[name]}" for name in signed_names]
    canonical = "\n".join(
        ["POST", "/", "", *lines, "", ";".join(signed_names), hashlib.sha256(body).hexdigest()]
    )
    amz_date = amz_date or headers["x-amz-date"]
    scope = f"{amz_date[:8]}/us-east-1/kinesis/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signature = hmac.new(
        signing_key("secret/key+1", amz_date[:8], "us-east-1"), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential=AKID/{scope}, SignedHeaders={';'.join(signed_names)}, "
        f"Signature={signature}"
    )
    return [*headers.items(), ("authorization", authorization)]


def test_sigv4_accepts_botocores_signature() -> None:
    assert check(signed("secret/key+1")) == "AKID"


def test_sigv4_accepts_a_signed_date_header_instead_of_x_amz_date() -> None:
    now = datetime.now(UTC)
    base = {
        "host": "127.0.0.1:4567",
        "date": now.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "x-amz-target": "Kinesis_20131202.ListStreams",
        "content-type": "application/x-amz-json-1.1",
    }
    names = ["content-type", "date", "host", "x-amz-target"]
    headers = sign_by_hand(base, names, b"{}", amz_date=now.strftime("%Y%m%dT%H%M%SZ"))
    assert (
        verify(
            method="POST",
            target="/",
            headers=headers,
            body=b"{}",
            credentials=SECRETS,
            region="us-east-1",
            now=now,
        )
        == "AKID"
    )


@pytest.mark.parametrize(
    ("request_", "kwargs", "expected", "status"),
    [
        (lambda: signed("wrong"), {}, "InvalidSignatureException", 403),
        (lambda: signed("secret/key+1"), {"body": b'{"x": 1}'}, "InvalidSignatureException", 403),
        (lambda: signed("secret/key+1", region="eu-west-1"), {}, "InvalidSignatureException", 403),
        (lambda: signed("secret/key+1"), {"skew": timedelta(minutes=6)}, "InvalidSignatureException", 400),
        (lambda: signed("secret/key+1"), {"skew": timedelta(minutes=-6)}, "InvalidSignatureException", 400),
        (lambda: AWSRequest(method="POST", url="http://h/", data=b"", headers={}), {}, "MissingAuthenticationTokenException", 403),
    ],
)  # fmt: skip
def test_sigv4_refusals(request_: Any, kwargs: dict[str, Any], expected: str, status: int) -> None:
    if "skew" in kwargs:  # the server's clock, taken when the test runs (not when collected)
        kwargs = {"now": datetime.now(UTC) + kwargs["skew"]}
    with pytest.raises(SignatureError) as exc:
        check(request_(), **kwargs)
    assert exc.value.type_name == expected
    assert exc.value.status == status


def test_sigv4_a_request_older_than_five_minutes_is_expired() -> None:
    request = signed("secret/key+1")
    assert check(request, now=datetime.now(UTC) + timedelta(minutes=4)) == "AKID"
    with pytest.raises(SignatureError) as exc:
        check(request, now=datetime.now(UTC) + timedelta(minutes=5, seconds=30))
    assert exc.value.message.startswith("Signature expired: ")
    assert "- 5 min.)" in exc.value.message
    with pytest.raises(SignatureError) as exc:
        check(request, now=datetime.now(UTC) - timedelta(minutes=5, seconds=30))
    assert exc.value.message.startswith("Signature not yet current: ")


def test_sigv4_a_signed_put_record_replayed_as_delete_stream_is_refused() -> None:
    body = b'{"StreamName":"victim","Data":"eA==","PartitionKey":"k"}'
    request = signed("secret/key+1", body, target="Kinesis_20131202.PutRecord")
    assert check(request) == "AKID"
    forged = replace_header(headers_of(request), "x-amz-target", "Kinesis_20131202.DeleteStream")
    with pytest.raises(SignatureError) as exc:
        check(request, headers=forged, body=b'{"StreamName":"victim"}')
    assert exc.value.type_name == "InvalidSignatureException"


@pytest.mark.parametrize("unsigned", ["x-amz-target", "content-type", "x-amz-date", "host"])
def test_sigv4_required_headers_must_be_signed(unsigned: str) -> None:
    """A signature that leaves out X-Amz-Target (or the others) would let a captured request be
    re-aimed at another operation: refused even though the signature over the rest is right."""
    headers = {
        "host": "127.0.0.1:4567",
        "x-amz-date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "x-amz-target": "Kinesis_20131202.DeleteStream",
        "content-type": "application/x-amz-json-1.1",
    }
    names = sorted(name for name in headers if name != unsigned)
    with pytest.raises(SignatureError) as exc:
        verify(
            method="POST",
            target="/",
            headers=sign_by_hand(headers, names, b"{}"),
            body=b"{}",
            credentials=SECRETS,
            region="us-east-1",
            now=datetime.now(UTC),
        )
    assert exc.value.type_name == "IncompleteSignatureException"
    assert exc.value.status == 400
    assert "must be a 'SignedHeader'" in exc.value.message


def test_sigv4_the_body_hash_is_always_checked() -> None:
    body = b'{"StreamName":"s","Data":"eA==","PartitionKey":"k"}'
    swapped = b'{"StreamName":"s","Data":"ZXZpbA==","PartitionKey":"k"}'
    unsigned = signed("secret/key+1", body, extra={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    with pytest.raises(SignatureError) as exc:
        check(unsigned, body=swapped)
    assert exc.value.type_name == "InvalidSignatureException"
    assert "UNSIGNED-PAYLOAD" in exc.value.message
    with pytest.raises(SignatureError):
        check(unsigned)  # refused even with the original body
    claimed = signed(
        "secret/key+1", body, extra={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    )
    assert check(claimed) == "AKID"
    with pytest.raises(SignatureError) as exc:
        check(claimed, body=swapped)
    assert "x-amz-content-sha256" in exc.value.message


def test_sigv4_malformed_authorization_headers() -> None:
    for value in ("Basic abc", "AWS4-HMAC-SHA256 Credential=AKID", "AWS4-HMAC-SHA256 x"):
        with pytest.raises(SignatureError) as exc:
            verify(
                method="POST",
                target="/",
                headers=[("authorization", value), ("host", "h")],
                body=b"",
                credentials=SECRETS,
                region="us-east-1",
                now=datetime.now(UTC),
            )
        assert exc.value.type_name == "IncompleteSignatureException"
