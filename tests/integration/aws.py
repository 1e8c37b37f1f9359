"""A boto3 Kinesis client for a test server's gateway, without botocore's retries.

``kinesis_client(server)`` talks to ``server.kinesis_endpoint`` with one attempt per call, so
that a test sees the error the gateway answered, not what is left after botocore's retries.
Keyword arguments choose other credentials or region (the gateway checks signatures only where
it was given secrets) and pass further botocore ``Config`` options (e.g. ``read_timeout``).
Note: legacy mode's ``max_attempts`` 1 still allows one retry (of throttling and 5xx too); a
test that must see every answer passes ``retries={"total_max_attempts": 1}``.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from streamd.testing import ServerProcess


def kinesis_client(
    server: ServerProcess,
    *,
    key: str = "test",
    secret: str = "test",
    region: str = "us-east-1",
    **config: Any,
) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=server.kinesis_endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(**{"retries": {"max_attempts": 1}, **config}),
    )
