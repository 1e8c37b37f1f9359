"""Authentication and authorization against a real server started with ``--credentials``.

Native protocol: no credentials, a wrong secret, an unknown key and a replayed signature (a
valid authenticate captured on one connection, sent on another) are refused with UNAUTHENTICATED
and the connection closes. Kinesis gateway: unsigned, wrongly signed and replayed-later requests
are refused. Each action is refused to a principal without it (ACCESS_DENIED natively,
AccessDeniedException 400 on the gateway) and allowed to one whose policy names it; a refused
request changes nothing; refusals and admin actions are audited, and no secret reaches the log.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from streamd.security.principals import ACTIONS
from streamd.testing import ServerProcess
from streamd_client import Position, auth, connect, wire
from streamd_client.errors import AccessDeniedError, StreamdError, UnauthenticatedError

SECRETS = {"admin": "admin-secret-0123456789", "nobody": "nobody-secret-0123456789"}
SECRETS.update({f"p-{a.replace(':', '-')}": f"{a}-secret-0123456789" for a in ACTIONS})


def key_of(name: str) -> str:
    return "AK" + name.upper().replace("-", "_")


def credentials_toml() -> str:
    parts = []
    for name, secret in SECRETS.items():
        if name == "admin":
            allow = '[{ actions = ["*"], streams = ["*"] }]'
        elif name == "nobody":
            allow = "[]"
        else:
            action = name[2:].replace("-", ":", 1)
            # Listing and the cluster's operations act on "*" (every stream, the node).
            streams = "*" if action in ("stream:list", "cluster:admin") else "auth-*"
            allow = f'[{{ actions = ["{action}"], streams = ["{streams}"] }}]'
        parts.append(
            f'[[principal]]\nname = "{name}"\n'
            f'keys = [{{ access_key_id = "{key_of(name)}", secret_access_key = "{secret}" }}]\n'
            f"allow = {allow}\n"
        )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("auth")
    path = base / "credentials.toml"
    path.write_text(credentials_toml())
    path.chmod(0o600)
    args = ["--credentials", str(path)]
    with ServerProcess(base / "data", kinesis=True, extra_args=args) as server:
        yield server


def as_(name: str) -> tuple[str, str]:
    return key_of(name), SECRETS[name]


# -- native: authentication ------------------------------------------------------------------


class Raw:
    """A native connection by hand (to send what the client library never would)."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.decoder = wire.FrameDecoder(wire.FRAME_BYTES_MAX_DEFAULT)
        self.next_id = 1

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(wire.encode_message(wire.request(self.next_id, op, args)))
        self.next_id += 1
        return self.receive()

    def receive(self) -> dict[str, Any]:
        while (message := self.decoder.next_message()) is wire.NEED_DATA:
            data = self.sock.recv(65536)
            assert data, "closed before an answer"
            self.decoder.receive_data(data)
        assert isinstance(message, dict)
        return message

    def closed(self) -> bool:
        return self.sock.recv(65536) == b""

    def hello(self) -> bytes:
        answer = self.call(wire.OP_HELLO, {"versions": [wire.PROTOCOL_VERSION]})
        assert answer["r"]["auth"] == auth.AUTH_SCHEME
        nonce: bytes = answer["r"]["nonce"]
        return nonce


async def test_no_credentials_get_unauthenticated_and_the_connection_closes(
    secured: ServerProcess,
) -> None:
    async with connect(secured.endpoint) as client:
        with pytest.raises(UnauthenticatedError, match="requires authentication"):
            await client.list_streams()
    with Raw(secured.endpoint) as raw:
        raw.hello()
        answer = raw.call("list_streams", {})
        assert answer["e"]["code"] == "UNAUTHENTICATED"
        assert raw.closed()


@pytest.mark.parametrize("who", ["wrong secret", "unknown key"])
async def test_wrong_credentials_are_refused(secured: ServerProcess, who: str) -> None:
    credentials = (
        (key_of("admin"), "not-the-secret-0123456789") if who == "wrong secret"
        else ("AKNOSUCHKEY", SECRETS["admin"])
    )  # fmt: skip
    with pytest.raises(UnauthenticatedError, match="unknown or the signature does not match"):
        async with connect(secured.endpoint, credentials=credentials):
            pass


def test_a_replayed_signature_is_refused_on_another_connection(secured: ServerProcess) -> None:
    key_id, secret = as_("admin")
    with Raw(secured.endpoint) as first, Raw(secured.endpoint) as second:
        signature = auth.sign(secret, first.hello(), key_id)
        args = {"access_key_id": key_id, "signature": signature}
        assert first.call(wire.OP_AUTHENTICATE, args)["r"] == {"principal": "admin"}
        assert first.call("list_streams", {})["r"]["streams"] is not None
        second.hello()
        answer = second.call(wire.OP_AUTHENTICATE, args)  # the captured frame, replayed
        assert answer["e"]["code"] == "UNAUTHENTICATED"
        assert second.closed()
    # A failed authenticate closes the connection: no second guess on the same nonce.
    with Raw(secured.endpoint) as third:
        third.hello()
        bad = {"access_key_id": key_id, "signature": b"\0" * auth.SIGNATURE_BYTES}
        assert third.call(wire.OP_AUTHENTICATE, bad)["e"]["code"] == "UNAUTHENTICATED"
        assert third.closed()


# -- native: authorization -------------------------------------------------------------------

# action -> (op, args) over the stream "auth-x" (created by admin first) or "*" ops.
NATIVE_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "stream:create": ("create_stream", {"stream": "auth-new", "shard_count": 1}),
    "stream:delete": ("delete_stream", {"stream": "auth-del"}),
    "stream:describe": ("describe_stream", {"stream": "auth-x"}),
    "stream:list": ("list_streams", {}),
    "stream:put": (
        "put_records",
        {"stream": "auth-x", "records": [{"k": "k", "d": b"v"}]},
    ),
    "stream:read": (
        "read",
        {
            "stream": "auth-x",
            "shard_id": "shardId-000000000000",
            "position": {"kind": "trim_horizon"},
        },
    ),
    "stream:reshard": ("resize_stream", {"stream": "auth-x", "shard_count": 1}),
    "stream:configure": ("update_retention", {"stream": "auth-x", "retention_hours": 48}),
    "group:consume": ("group_describe", {"stream": "auth-x", "group": "g"}),
    "group:admin": ("group_create", {"stream": "auth-x", "group": "g"}),
    "cluster:admin": ("cluster_nodes", {}),
}


def test_every_action_has_a_native_call() -> None:
    assert set(NATIVE_CALLS) == ACTIONS


async def test_each_action_is_denied_without_the_policy_and_allowed_with_it(
    secured: ServerProcess,
) -> None:
    async with connect(secured.endpoint, credentials=as_("admin")) as admin:
        for name in ("auth-x", "auth-del", "other"):
            if name not in await admin.list_streams():
                await admin.create_stream(name, shard_count=1)
    for action, (op, args) in NATIVE_CALLS.items():
        async with connect(secured.endpoint, credentials=as_("nobody")) as nobody:
            with pytest.raises(AccessDeniedError, match=f"not allowed {action}"):
                await nobody.call(op, args)
        holder = f"p-{action.replace(':', '-')}"
        async with connect(secured.endpoint, credentials=as_(holder)) as allowed:
            try:
                await allowed.call(op, args)
            except AccessDeniedError:
                raise
            except StreamdError:
                pass  # allowed through; the operation itself may refuse (e.g. no group yet)
            if "stream" in args:  # the pattern matters: the same action on "other" is denied
                with pytest.raises(AccessDeniedError):
                    await allowed.call(op, {**args, "stream": "other"})
    log = await anyio.Path(secured.log_path).read_text()
    audited = {
        (e["principal"], e["action"], e["outcome"])
        for e in map(json.loads, (line for line in log.splitlines() if '"audit"' in line))
    }
    assert ("nobody", "cluster:admin", "denied") in audited  # a refusal is always audited
    assert ("p-stream-reshard", "stream:reshard", "ok") in audited
    assert ("p-cluster-admin", "cluster:admin", "ok") not in audited  # cluster_nodes: a read


async def test_a_refused_request_changes_nothing(secured: ServerProcess) -> None:
    async with connect(secured.endpoint, credentials=as_("admin")) as admin:
        if "auth-keep" not in await admin.list_streams():
            await admin.create_stream("auth-keep", shard_count=1)
        async with connect(secured.endpoint, credentials=as_("p-stream-read")) as reader:
            for op, args in (
                ("delete_stream", {"stream": "auth-keep"}),
                ("put_records", {"stream": "auth-keep",
                                 "records": [{"k": "k", "d": b"v"}]}),
                ("update_retention", {"stream": "auth-keep", "retention_hours": 72}),
                ("create_stream", {"stream": "auth-never", "shard_count": 1}),
            ):  # fmt: skip
                with pytest.raises(AccessDeniedError):
                    await reader.call(op, args)
        described = await admin.describe_stream("auth-keep")
        assert described.retention_hours == 24
        assert "auth-never" not in await admin.list_streams()
        page = await admin.read("auth-keep", "shardId-000000000000", Position.trim_horizon())
        assert page.records == []


# -- gateway ---------------------------------------------------------------------------------


def kinesis(server: ServerProcess, name: str, secret: str | None = None) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=server.kinesis_endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_of(name),
        aws_secret_access_key=secret or SECRETS[name],
        config=Config(retries={"max_attempts": 1}),
    )


def send_raw(server: ServerProcess, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    host, port = server.kinesis_endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_gateway_refuses_unsigned_wrong_and_replayed_later_requests(
    secured: ServerProcess,
) -> None:
    body = json.dumps({}).encode()
    headers = {"X-Amz-Target": "Kinesis_20131202.ListStreams",
               "Content-Type": "application/x-amz-json-1.1"}  # fmt: skip
    status, answer = send_raw(secured, headers, body)
    assert (status, answer["__type"]) == (403, "MissingAuthenticationTokenException")
    with pytest.raises(ClientError, match="InvalidSignatureException"):
        kinesis(secured, "admin", "not-the-secret-0123456789").list_streams()
    request = AWSRequest(
        method="POST", url=secured.kinesis_endpoint + "/", data=body, headers=headers
    )
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    with mock.patch("botocore.auth.get_current_datetime", return_value=ten_minutes_ago):
        SigV4Auth(
            BotoCredentials(*as_("admin")), "kinesis", "us-east-1"
        ).add_auth(request)  # fmt: skip
    status, answer = send_raw(secured, dict(request.headers.items()), body)
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")


KINESIS_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "stream:create": ("create_stream", {"StreamName": "auth-k-new", "ShardCount": 1}),
    "stream:delete": ("delete_stream", {"StreamName": "auth-k-del"}),
    "stream:describe": ("describe_stream_summary", {"StreamName": "auth-k"}),
    "stream:list": ("list_streams", {}),
    "stream:put": ("put_record", {"StreamName": "auth-k", "Data": b"v", "PartitionKey": "k"}),
    "stream:read": (
        "get_shard_iterator",
        {
            "StreamName": "auth-k",
            "ShardId": "shardId-000000000000",
            "ShardIteratorType": "TRIM_HORIZON",
        },
    ),
    "stream:reshard": (
        "update_shard_count",
        {"StreamName": "auth-k", "TargetShardCount": 1, "ScalingType": "UNIFORM_SCALING"},
    ),
    "stream:configure": ("add_tags_to_stream", {"StreamName": "auth-k", "Tags": {"a": "b"}}),
    "group:consume": (
        "list_stream_consumers",
        {"StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/auth-k"},
    ),
    "group:admin": (
        "register_stream_consumer",
        {"StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/auth-k", "ConsumerName": "c"},
    ),
}


def test_gateway_denies_each_action_without_the_policy_and_allows_it_with(
    secured: ServerProcess,
) -> None:
    admin = kinesis(secured, "admin")
    for name in ("auth-k", "auth-k-del"):
        if name not in admin.list_streams()["StreamNames"]:
            admin.create_stream(StreamName=name, ShardCount=1)
    nobody = kinesis(secured, "nobody")
    for action, (method, params) in KINESIS_CALLS.items():
        with pytest.raises(ClientError) as refused:
            getattr(nobody, method)(**params)
        error = refused.value.response
        assert error["Error"]["Code"] == "AccessDeniedException", (action, error)
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        allowed = kinesis(secured, f"p-{action.replace(':', '-')}")
        try:
            getattr(allowed, method)(**params)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] != "AccessDeniedException", (action, exc)
    admin.describe_stream_summary(StreamName="auth-k")
    assert "auth-k-new" in admin.list_streams()["StreamNames"]


def test_gateway_refusal_changes_nothing_and_is_audited_without_secrets(
    secured: ServerProcess,
) -> None:
    admin = kinesis(secured, "admin")
    if "auth-k2" not in admin.list_streams()["StreamNames"]:
        admin.create_stream(StreamName="auth-k2", ShardCount=1)
    reader = kinesis(secured, "p-stream-read")
    with pytest.raises(ClientError, match="AccessDeniedException"):
        reader.delete_stream(StreamName="auth-k2")
    with pytest.raises(ClientError, match="AccessDeniedException"):
        reader.put_record(StreamName="auth-k2", Data=b"v", PartitionKey="k")
    assert (
        admin.describe_stream_summary(StreamName="auth-k2")["StreamDescriptionSummary"][
            "StreamStatus"
        ]
        == "ACTIVE"
    )
    iterator = reader.get_shard_iterator(
        StreamName="auth-k2", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    assert reader.get_records(ShardIterator=iterator)["Records"] == []
    log = Path(secured.log_path).read_text()
    events = [json.loads(line) for line in log.splitlines() if '"event": "audit"' in line]
    assert {
        ("p-stream-read", "stream:delete", "auth-k2", "denied", "kinesis"),
        ("admin", "stream:create", "auth-k2", "ok", "kinesis"),
    } <= {(e["principal"], e["action"], e["resource"], e["outcome"], e["protocol"]) for e in events}
    for secret in SECRETS.values():
        assert secret not in log
