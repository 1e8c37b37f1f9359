"""What a plain-HTTP client on the gateway's TLS listener is told before the close.

An HTTP 400 with a Kinesis error body that says to use https (boto3 and the aws CLI print the
message), sent in plaintext since the client speaks no TLS (security/tls.py sends it).
"""

from __future__ import annotations

from .codec import Protocol
from .dispatch import error_reply
from .http_wire import encode_answer

MESSAGE = (
    "this Kinesis endpoint speaks TLS only: use https:// (endpoint_url='https://HOST:PORT', "
    "with verify=CA.pem or aws --ca-bundle CA.pem)"
)


def plaintext_refusal() -> bytes:
    reply = error_reply(Protocol.JSON, "TLSRequiredException", MESSAGE, 400)
    return encode_answer(reply.status, reply.headers, reply.body, close=True)
