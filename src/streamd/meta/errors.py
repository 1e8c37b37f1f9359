"""Errors of the metadata stores (SQLite and etcd); none of these cross the wire as they are.

The one metadata condition a remote client may see is ``MetadataUnavailableError`` (wire code
METADATA_UNAVAILABLE, retryable), from ``streamd_client.errors``: the store could not be reached
or did not answer in time. Everything here is for the server's own code:

* ``CompactedError``: a watch (or a read at a revision) asked for history the store no longer
  keeps. Expected: the caller re-lists (``MetaStore.snapshot``) and watches from there.
* ``LeaseNotFoundError``: the lease expired or was revoked. Expected: a node that loses its
  lease stops acting on what it held and registers again.
* ``EtcdRequestError``: etcd refused the request (too many txn operations, a request too large,
  permission denied, ...). A bug or a misconfiguration on our side: retrying will not help.
* ``EtcdProtocolError``: etcd's gateway answered something that is not the JSON we expect (or
  more of it than we accept). The only exception the sans-I/O codec raises for any input.
"""

from __future__ import annotations


class MetaError(Exception):
    """Base of the errors in this module."""


class CompactedError(MetaError):
    """The requested revision is older than the oldest the store keeps.

    ``compact_revision`` is the oldest revision one may start a watch from now.
    """

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFoundError(MetaError):
    """The lease does not exist (any more): it expired, was revoked, or was never granted here."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} not found (expired or revoked)")
        self.lease_id = lease_id


class EtcdRequestError(MetaError):
    """etcd refused the request; ``grpc_code`` is etcd's gRPC status code (0 if none)."""

    def __init__(self, message: str, grpc_code: int = 0) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class EtcdProtocolError(MetaError):
    """etcd's JSON gateway answered with something we cannot decode or will not accept."""
