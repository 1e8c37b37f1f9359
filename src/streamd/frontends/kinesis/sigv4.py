"""AWS Signature Version 4 verification of a request's Authorization header, sans-I/O.

The gateway recomputes the signature the client must have computed and compares in constant
time: canonical request (method, normalized and encoded path, sorted query, the signed headers
with trimmed values, payload hash) -> string to sign (algorithm, X-Amz-Date, credential scope,
SHA-256 of the canonical request) -> HMAC chain from ``"AWS4" + secret`` over date, region,
service and ``aws4_request``. The payload hash is always the SHA-256 of the body as received;
``X-Amz-Content-SHA256``, when sent, must equal it (``UNSIGNED-PAYLOAD`` is refused: it would let
a captured request carry another body).

What a signature must cover, so that a captured request cannot be turned into another one:
``host`` (over HTTP/2 the JS SDK signs ``:authority`` instead, which the HTTP/2 layer keeps among
the headers for this), ``x-amz-target`` (else a signed PutRecord replays as DeleteStream),
``content-type`` and the date header (``x-amz-date``, or ``date`` when there is no
``x-amz-date``; else an old request replays with a fresh date). botocore, the aws CLI and the
other SDKs sign all of them.
The date must be within 5 minutes of the server's clock (AWS's window for SigV4 requests).

Failures are the errors (and statuses) the SDKs expect from a JSON-protocol AWS service:
MissingAuthenticationTokenException (403: no Authorization), IncompleteSignatureException (400:
a malformed Authorization, no date, a required header left unsigned), UnrecognizedClientException
(400: unknown access key), InvalidSignatureException (403 for a wrong signature or scope; 400
for "Signature expired" / "Signature not yet current" and a body that does not match its hash).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote

ALGORITHM: Final = "AWS4-HMAC-SHA256"
SERVICE: Final = "kinesis"
CLOCK_SKEW_MAX: Final = timedelta(minutes=5)
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
# Headers every signature must cover (the date header is checked on its own: either one).
SIGNED_HEADERS_REQUIRED: Final = ("host", "x-amz-target", "content-type")
_AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
_HEADER_NAMES: Final = {
    "host": "Host",
    "x-amz-target": "X-Amz-Target",
    "content-type": "Content-Type",
    "x-amz-date": "X-Amz-Date",
    "date": "Date",
}

MISSING_TOKEN: Final = "MissingAuthenticationTokenException"
INCOMPLETE_SIGNATURE: Final = "IncompleteSignatureException"
INVALID_SIGNATURE: Final = "InvalidSignatureException"
UNRECOGNIZED_CLIENT: Final = "UnrecognizedClientException"


class SignatureError(Exception):
    """A request that fails verification; ``type_name`` and ``status`` are what to answer."""

    def __init__(self, type_name: str, message: str, status: int = 400) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.status = status


def _missing(message: str) -> SignatureError:
    return SignatureError(MISSING_TOKEN, message, 403)


def _incomplete(message: str) -> SignatureError:
    return SignatureError(INCOMPLETE_SIGNATURE, message, 400)


def _invalid(message: str, status: int = 403) -> SignatureError:
    return SignatureError(INVALID_SIGNATURE, message, status)


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    """(credential, signed header names, signature) of an Authorization header value."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Authorization header must use {ALGORITHM}")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts[key.strip()] = val.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not parts.get(k)]
    if missing:
        raise _incomplete(
            f"Authorization header requires {', '.join(missing)} parameter(s). "
            f"Authorization={value[:200]}"
        )
    return parts["Credential"], parts["SignedHeaders"].split(";"), parts["Signature"]


def canonical_uri(path: str) -> str:
    """The path with dot segments and empty segments removed, then URI-encoded once more."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~")


def canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = [pair.partition("=")[::2] for pair in query.split("&")]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def verify(
    *,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    credentials: Mapping[str, str],
    region: str,
    now: datetime,
) -> str:
    """Check a request's SigV4 signature; return the access key id. Raises SignatureError.

    ``target`` is the request target as sent (path and query, still percent-encoded);
    ``headers`` are (lowercase name, value) pairs in arrival order.
    """
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)
    authorization = values.get("authorization")
    if not authorization:
        raise _missing("Missing Authentication Token")
    credential, signed, signature = _parse_authorization(authorization[0])
    key_id, _, scope = credential.partition("/")
    scope_parts = scope.split("/")
    if len(scope_parts) != 4 or scope_parts[3] != "aws4_request":
        raise _incomplete(f"Credential should be scoped correctly: {credential[:200]}")
    scope_date, scope_region, scope_service, _ = scope_parts
    secret = credentials.get(key_id)
    if secret is None:
        raise SignatureError(
            UNRECOGNIZED_CLIENT, "The security token included in the request is invalid.", 400
        )
    amz_date, when = _request_date(values, signed)
    _check_clock(amz_date, when, now)
    if scope_date != amz_date[:8]:
        raise _invalid(
            f"Date in Credential scope does not match YYYYMMDD from X-Amz-Date: {amz_date}"
        )
    if scope_region != region:
        raise _invalid(f"Credential should be scoped to a valid region, not '{scope_region}'.")
    if scope_service != SERVICE:
        raise _invalid(f"Credential should be scoped to correct service: '{SERVICE}'.")
    for name in SIGNED_HEADERS_REQUIRED:
        if name == "host" and ":authority" in signed:  # HTTP/2: the JS SDK signs :authority
            continue
        if name not in signed:
            raise _incomplete(
                f"'{_HEADER_NAMES[name]}' must be a 'SignedHeader' in the AWS Authorization."
            )
    canonical = _canonical_request(method, target, values, signed, body)
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    expected = hmac.new(
        signing_key(secret, scope_date, scope_region), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise _invalid(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details."
        )
    return key_id


def _request_date(values: dict[str, list[str]], signed: list[str]) -> tuple[str, datetime]:
    """The request's time as X-Amz-Date text (the string to sign's timestamp) and as a datetime.
    ``X-Amz-Date`` wins; a ``Date`` header (RFC 7231) stands in when it is absent. Either way
    the header used must be signed."""
    amz_date = values.get("x-amz-date")
    if amz_date is not None:
        if "x-amz-date" not in signed:
            raise _incomplete("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
        try:
            when = datetime.strptime(amz_date[0], _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise _incomplete(f"X-Amz-Date {amz_date[0][:40]!r} is malformed") from None
        return amz_date[0], when
    date = values.get("date")
    if date is None:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    if "date" not in signed:
        raise _incomplete("'Date' must be a 'SignedHeader' in the AWS Authorization.")
    try:
        when = parsedate_to_datetime(date[0])
    except (TypeError, ValueError):
        raise _incomplete(f"Date {date[0][:40]!r} is malformed") from None
    if when.tzinfo is None:
        raise _incomplete(f"Date {date[0][:40]!r} has no time zone")
    when = when.astimezone(UTC)
    return when.strftime(_AMZ_DATE_FORMAT), when


def _check_clock(amz_date: str, when: datetime, now: datetime) -> None:
    """Refuse a request dated more than CLOCK_SKEW_MAX away from ``now`` (AWS's messages)."""
    minutes = int(CLOCK_SKEW_MAX.total_seconds() // 60)
    if when < now - CLOCK_SKEW_MAX:
        raise _invalid(
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - CLOCK_SKEW_MAX).strftime(_AMZ_DATE_FORMAT)} "
            f"({now.strftime(_AMZ_DATE_FORMAT)} - {minutes} min.)",
            400,
        )
    if when > now + CLOCK_SKEW_MAX:
        raise _invalid(
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + CLOCK_SKEW_MAX).strftime(_AMZ_DATE_FORMAT)} "
            f"({now.strftime(_AMZ_DATE_FORMAT)} + {minutes} min.)",
            400,
        )


def _canonical_request(
    method: str, target: str, values: dict[str, list[str]], signed: list[str], body: bytes
) -> str:
    path, _, query = target.partition("?")
    lines = [method.upper(), canonical_uri(path), canonical_query(query)]
    for name in signed:
        found = values.get(name)
        if found is None:
            raise _invalid(f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in found)}")
    lines.append("")
    lines.append(";".join(signed))
    lines.append(_payload_hash(values, body))
    return "\n".join(lines)


def _payload_hash(values: dict[str, list[str]], body: bytes) -> str:
    """SHA-256 of the body as received; a claimed X-Amz-Content-SHA256 must be that."""
    actual = hashlib.sha256(body).hexdigest()
    claimed = next(iter(values.get("x-amz-content-sha256", [])), None)
    if claimed is None or claimed.lower() == actual:
        return actual
    if claimed == UNSIGNED_PAYLOAD:
        raise _invalid(
            "UNSIGNED-PAYLOAD is not accepted: the body must be covered by the signature.", 400
        )
    raise _invalid(
        "The provided 'x-amz-content-sha256' header does not match what was computed.", 400
    )
