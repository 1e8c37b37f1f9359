"""The cluster's control plane: membership, controller election, placement and decisions.

``placement`` and ``decisions`` are pure (no trio, no I/O): the same state gives the same
decisions on any controller. ``membership``, ``election`` and ``service`` are the trio layer
that reads and writes etcd (through a ``MetaStore``). docs/cluster.md has the keyspace, the
node life cycle and the decision table.
"""
