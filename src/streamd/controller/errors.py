"""Errors of the control plane; none crosses the wire as it is.

Refusals at start (the node does not serve; the message says what to fix):

* ``DuplicateNodeIdError``: a live node already holds this node id (its registration's lease is
  alive). A node that was just killed holds it for up to one lease TTL more.
* ``ClusterIdMismatchError``: the etcd namespace belongs to another cluster.
* an unreachable etcd is ``streamd_client.errors.MetadataUnavailableError`` (retryable).

In operation:

* ``NodeLostError``: this node's lease may have lapsed (a renewal did not succeed in time, or
  etcd says the lease is gone). The node stops acting on anything the lease held.
* ``NotControllerError``: this node is not (or no longer) the active controller; its fenced
  writes are refused by etcd.
"""

from __future__ import annotations


class ClusterError(Exception):
    """Base of the errors in this module."""


class DuplicateNodeIdError(ClusterError):
    def __init__(self, node_id: str, holder: str) -> None:
        super().__init__(
            f"node id {node_id!r} is already registered by a live node ({holder}); "
            "give this node another --node-id, or stop the other one (a node that was just "
            "killed holds its id until its lease expires, a few seconds)"
        )
        self.node_id = node_id


class ClusterIdMismatchError(ClusterError):
    def __init__(self, expected: str, found: str) -> None:
        super().__init__(
            f"this node belongs to cluster {expected!r} but etcd holds cluster {found!r}: "
            "wrong --cluster address or namespace, or a data dir from another cluster"
        )
        self.expected = expected
        self.found = found


class NodeLostError(ClusterError):
    """This node's lease may have lapsed: it is no longer a member until it registers again."""


class NotControllerError(ClusterError):
    """This node is not the active controller (deposed, or never elected)."""
