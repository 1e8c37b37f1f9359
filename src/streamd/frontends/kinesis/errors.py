"""streamd's typed errors onto the Kinesis error names the SDKs parse, in one table.

Every ``StreamdError`` code maps to the exception Kinesis answers in the same situation, with
its HTTP status (400 client errors, 500 InternalFailureException, 503 ServiceUnavailable). Codes
absent from the table (a newer engine) fall back by family: an InvalidArgumentError subclass is
an InvalidArgumentException, anything else InternalFailureException. The gateway's own errors
(unknown operation, bad signature, bad body) are raised directly as ``KinesisError``.

STORAGE_FULL answers ServiceUnavailable (503), Kinesis' "temporary failure of the server":
botocore retries every 500/502/503/504 in both its legacy and standard retry modes, and the KPL
retries the per-record InternalFailure that PutRecords reports for it; that is what a writer
should do until space is freed. DATA_CORRUPT (a stored range failed its CRC) answers
InternalFailureException (500), the one server-fault exception botocore's Kinesis model has
(SubscribeToShard's event stream models it too); its message names the stream, the shard and
the damaged sequence range, and how to quarantine it. docs/kinesis.md has the table.
"""

from __future__ import annotations

from typing import Final

from streamd_client.errors import InvalidArgumentError, StreamdError

from .types import KinesisError

# Kinesis exception names (the ``__type`` the SDKs turn into exception classes).
RESOURCE_NOT_FOUND: Final = "ResourceNotFoundException"
RESOURCE_IN_USE: Final = "ResourceInUseException"
INVALID_ARGUMENT: Final = "InvalidArgumentException"
LIMIT_EXCEEDED: Final = "LimitExceededException"
THROUGHPUT_EXCEEDED: Final = "ProvisionedThroughputExceededException"
EXPIRED_ITERATOR: Final = "ExpiredIteratorException"
EXPIRED_NEXT_TOKEN: Final = "ExpiredNextTokenException"
VALIDATION: Final = "ValidationException"
SERIALIZATION: Final = "SerializationException"
UNKNOWN_OPERATION: Final = "UnknownOperationException"
INTERNAL_FAILURE: Final = "InternalFailureException"  # botocore's model names it so
# The per-record ErrorCode of a PutRecords answer is the short form, as Kinesis sends it.
RECORD_INTERNAL_FAILURE: Final = "InternalFailure"
SERVICE_UNAVAILABLE: Final = "ServiceUnavailable"
ACCESS_DENIED: Final = "AccessDeniedException"

# code -> (Kinesis name, HTTP status)
_BY_CODE: Final[dict[str, tuple[str, int]]] = {
    "INVALID_ARGUMENT": (INVALID_ARGUMENT, 400),
    "RECORD_TOO_LARGE": (VALIDATION, 400),
    "REQUEST_TOO_LARGE": (VALIDATION, 400),
    "INVALID_PARTITION_KEY": (VALIDATION, 400),
    "INVALID_HASH_KEY": (INVALID_ARGUMENT, 400),
    "INVALID_STREAM_NAME": (VALIDATION, 400),
    "INVALID_SEQUENCE_NUMBER": (INVALID_ARGUMENT, 400),
    "INVALID_BATCH": (INVALID_ARGUMENT, 400),
    "UNKNOWN_OPERATION": (UNKNOWN_OPERATION, 400),
    "STREAM_NOT_FOUND": (RESOURCE_NOT_FOUND, 400),
    "SHARD_NOT_FOUND": (RESOURCE_NOT_FOUND, 400),
    "STREAM_EXISTS": (RESOURCE_IN_USE, 400),
    "RESOURCE_IN_USE": (RESOURCE_IN_USE, 400),
    "WRONG_SHARD": (INVALID_ARGUMENT, 400),
    "SHARD_CLOSED": (INVALID_ARGUMENT, 400),
    "THROTTLED": (THROUGHPUT_EXCEEDED, 400),
    "LIMIT_EXCEEDED": (LIMIT_EXCEEDED, 400),
    "STORAGE_FULL": (SERVICE_UNAVAILABLE, 503),
    "OUT_OF_ORDER_SEQUENCE": (INVALID_ARGUMENT, 400),
    "CORRUPT_DATA": (INTERNAL_FAILURE, 500),
    "DATA_CORRUPT": (INTERNAL_FAILURE, 500),
    "SHUTTING_DOWN": (SERVICE_UNAVAILABLE, 503),
    "METADATA_UNAVAILABLE": (SERVICE_UNAVAILABLE, 503),
    "NOT_LEADER": (SERVICE_UNAVAILABLE, 503),
    "SHARD_UNAVAILABLE": (SERVICE_UNAVAILABLE, 503),
    "COORDINATOR_UNAVAILABLE": (SERVICE_UNAVAILABLE, 503),
    "TIMEOUT": (SERVICE_UNAVAILABLE, 503),
    "CONNECTION_LOST": (SERVICE_UNAVAILABLE, 503),
    "INTERNAL": (INTERNAL_FAILURE, 500),
    "ACCESS_DENIED": (ACCESS_DENIED, 400),
    "UNAUTHENTICATED": ("UnrecognizedClientException", 400),
}


def kinesis_name_of(exc: StreamdError) -> tuple[str, int]:
    """The Kinesis exception name and HTTP status for a streamd error."""
    mapped = _BY_CODE.get(exc.code)
    if mapped is not None:
        return mapped
    if isinstance(exc, InvalidArgumentError):
        return INVALID_ARGUMENT, 400
    return INTERNAL_FAILURE, 500


def kinesis_error_of(exc: StreamdError) -> KinesisError:
    """The KinesisError to answer for a streamd error (message kept)."""
    name, status = kinesis_name_of(exc)
    return KinesisError(name, exc.message, status)


def invalid_argument(message: str) -> KinesisError:
    return KinesisError(INVALID_ARGUMENT, message, 400)


def validation(message: str) -> KinesisError:
    return KinesisError(VALIDATION, message, 400)


def not_found(message: str) -> KinesisError:
    return KinesisError(RESOURCE_NOT_FOUND, message, 400)


def in_use(message: str) -> KinesisError:
    return KinesisError(RESOURCE_IN_USE, message, 400)


def unsupported_operation(operation: str) -> KinesisError:
    return KinesisError(INVALID_ARGUMENT, f"operation {operation} is not supported by streamd", 400)
