"""The AWS SDK for JavaScript v3 (``@aws-sdk/client-kinesis``, pinned in tests/jssdk) with its
default request handler, which speaks HTTP/2 with prior knowledge to an http:// endpoint, one
session per call, against a real ``streamd serve`` whose gateway checks SigV4.

tests/jssdk/tour.mjs does the whole tour and checks every answer itself: create, put-record,
put-records, list-shards, every shard iterator type, get-records, bodies larger than either
side's first flow-control window, tags, register consumer + SubscribeToShard (records before
and during the subscription, over an HTTP/2 stream the client resets when it is done), split,
merge, update-shard-count, a typed error, delete. Before this gateway spoke HTTP/2, every call
failed with "Protocol error" (the answer to the preface was an HTTP/1.1 400).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.testing import ServerProcess

from .jssdk import SOURCE, require_jssdk

REGION = "eu-west-1"
ACCESS_KEY = "AKIDJSSDK"
SECRET = "js-sdk-secret/K7MDENG+bPxRfiCY"
TOUR_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def signed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--kinesis-region", REGION, "--kinesis-access-key", ACCESS_KEY]
    env = {"STREAMD_KINESIS_SECRET_KEY": SECRET}
    data = tmp_path_factory.mktemp("jssdk") / "data"
    with ServerProcess(
        data, fsync="never", kinesis=True, extra_args=args, env=env, log_level="debug"
    ) as process:
        yield process


def _tour(sdk: Path, endpoint: str, secret: str) -> tuple[int, dict[str, object], str]:
    env = {
        **os.environ,
        "JSSDK_DIR": str(sdk),
        "KINESIS_ENDPOINT": endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret,
        "NODE_NO_WARNINGS": "1",
    }
    done = subprocess.run(
        ["node", str(SOURCE / "tour.mjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=TOUR_TIMEOUT_S,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    return done.returncode, summary, done.stderr


def test_js_sdk_default_handler_speaks_every_operation_over_http2(
    signed_gateway: ServerProcess,
) -> None:
    sdk = require_jssdk()
    code, summary, stderr = _tour(sdk, signed_gateway.kinesis_endpoint, SECRET)
    assert code == 0 and summary.get("ok") is True, f"{summary}\n{stderr[-3000:]}"
    assert summary["steps"] == [
        "CreateStream",
        "PutRecord",
        "PutRecords",
        "ListShards",
        "GetRecords",
        "AddTagsToStream",
        "ListTagsForStream",
        "RemoveTagsFromStream",
        "RegisterStreamConsumer",
        "SubscribeToShard",
        "SplitShard",
        "MergeShards",
        "UpdateShardCount",
        "typed-error",
        "DeleteStream",
    ]
    assert summary["iterator_types"] == [
        "AFTER_SEQUENCE_NUMBER",
        "AT_SEQUENCE_NUMBER",
        "AT_TIMESTAMP",
        "LATEST",
        "TRIM_HORIZON",
    ]
    assert summary["large_bodies"] is True
    assert summary["subscribe_records"] == 7
    # Every call came over HTTP/2 (one connection per call: the SDK isolates each session).
    protocols = [
        json.loads(line)["protocol"]
        for line in signed_gateway.log_path.read_text().splitlines()
        if '"kinesis.connection.protocol"' in line
    ]
    assert len(protocols) > 30 and set(protocols) == {"h2c"}


def test_js_sdk_with_a_wrong_secret_gets_the_signature_error(
    signed_gateway: ServerProcess,
) -> None:
    sdk = require_jssdk()
    code, summary, stderr = _tour(sdk, signed_gateway.kinesis_endpoint, "not-the-secret")
    assert code == 1 and summary["ok"] is False
    assert summary["steps"] == []
    assert "signature" in str(summary["error"]).lower(), stderr[-2000:]
