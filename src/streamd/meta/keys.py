"""The cluster's keyspace: every key the control plane writes, and the format of its value.

One module names them all so that nobody invents a key elsewhere and every writer's compare is
written down once (docs/cluster.md has the same table for operators). Keys live under the
store's namespace (``EtcdMetaStore(namespace=...)``), so one etcd may hold several clusters.

=====================================  =========================  ================================
key                                    written by                 compare
=====================================  =========================  ================================
``cluster/id``                         the first node to start    absent (put once, never changed)
``nodes/<node_id>``                    that node, on its lease    absent (a live duplicate refuses)
``controller/active``                  the elected controller     absent, on the elector's lease
``shards/<stream>/<shard_id>``         creator (unassigned); the  controller key == fencing token,
                                       controller afterwards      and the document's mod_revision
``coordinators/<stream>/<group>``      a node, unplaced, on the   creator: absent. Controller:
                                       group's first request;     as for shards
                                       the controller afterwards
``joined/<stream>/<shard_id>``         the shard's leader, when   none (a hint: the controller
                                       a joining replica caught   checks it against the shard
                                       up; the controller deletes document and deletes it with
                                                                  the change it makes)
``declined/<stream>/<shard_id>``       the node named leader,     none (checked as above)
                                       when it declines the term
``moves/<stream>/<shard_id>``          ``streamd cluster          none; the controller deletes
                                       move-replica``             it once applied or refused
``drains/<node_id>``                   ``streamd cluster drain``  none; ``undrain`` deletes it
=====================================  =========================  ================================

Values are JSON objects with a version field ``"v"`` (today 1). A decoder refuses a value of
an unknown version or shape with ``KeyFormatError``: a newer node wrote it, or something that
is not streamd did; guessing would be worse than stopping.

The controller's fencing token is the ``mod_revision`` of ``controller/active``: the key is put
once, if absent, and never rewritten while held, so its mod_revision *is* its create revision,
and a holder that lost it (lease lapsed, someone else elected) fails every compare on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Self

from .errors import MetaError

FORMAT_VERSION: Final = 1
CLUSTER_ID_KEY: Final = "cluster/id"
NODES_PREFIX: Final = "nodes/"
CONTROLLER_KEY: Final = "controller/active"
SHARDS_PREFIX: Final = "shards/"
COORDINATORS_PREFIX: Final = "coordinators/"
JOINED_PREFIX: Final = "joined/"
DECLINED_PREFIX: Final = "declined/"
MOVES_PREFIX: Final = "moves/"
DRAINS_PREFIX: Final = "drains/"

_NAME_RE: Final = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_VALUE_BYTES_MAX: Final = 64 * 1024

ShardStatus = Literal["unassigned", "ok", "unavailable"]
_STATUSES: Final = ("unassigned", "ok", "unavailable")


class KeyFormatError(MetaError):
    """A key or value in the cluster keyspace is not in the format this version reads."""


def check_name(kind: str, name: str) -> str:
    """A node id, stream, shard id or group as a key part: ``[a-zA-Z0-9_.-]{1,128}``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{kind} {name!r:.80} is not [a-zA-Z0-9_.-]{{1,128}}")
    return name


def node_key(node_id: str) -> str:
    return NODES_PREFIX + check_name("node id", node_id)


def shard_key(stream: str, shard_id: str) -> str:
    return f"{SHARDS_PREFIX}{check_name('stream', stream)}/{check_name('shard id', shard_id)}"


def coordinator_key(stream: str, group: str) -> str:
    return f"{COORDINATORS_PREFIX}{check_name('stream', stream)}/{check_name('group', group)}"


def move_key(stream: str, shard_id: str) -> str:
    return f"{MOVES_PREFIX}{check_name('stream', stream)}/{check_name('shard id', shard_id)}"


def drain_key(node_id: str) -> str:
    return DRAINS_PREFIX + check_name("node id", node_id)


# -- values ------------------------------------------------------------------------------------


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps({"v": FORMAT_VERSION, **doc}, sort_keys=True, separators=(",", ":")).encode()


def _decode(what: str, raw: bytes) -> dict[str, Any]:
    if len(raw) > _VALUE_BYTES_MAX:
        raise KeyFormatError(f"{what}: value of {len(raw)} bytes (at most {_VALUE_BYTES_MAX})")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeyFormatError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise KeyFormatError(f"{what}: not a JSON object")
    version = doc.get("v")
    if type(version) is not int or version != FORMAT_VERSION:  # True == 1: not a version
        raise KeyFormatError(f"{what}: format version {doc.get('v')!r}, this node reads 1")
    return doc


def _field(what: str, doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise KeyFormatError(f"{what}: field {name!r} is {value!r:.80}")
    return value


def _node_list(what: str, doc: dict[str, Any], name: str) -> tuple[str, ...]:
    value = _field(what, doc, name, list)
    if not all(isinstance(n, str) and _NAME_RE.fullmatch(n) for n in value):
        raise KeyFormatError(f"{what}: field {name!r} holds a bad node id")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class ClusterId:
    cluster_id: str

    def encode(self) -> bytes:
        return _encode({"cluster_id": self.cluster_id})

    @classmethod
    def decode(cls, raw: bytes) -> ClusterId:
        doc = _decode(CLUSTER_ID_KEY, raw)
        return cls(_field(CLUSTER_ID_KEY, doc, "cluster_id", str))


@dataclass(frozen=True, slots=True)
class NodeRegistration:
    """``nodes/<node_id>``: a live node (the key dies with the node's lease)."""

    node_id: str
    native_address: str  # HOST:PORT clients and peers reach the native protocol on
    kinesis_address: str  # HOST:PORT of the Kinesis gateway ("" if it has none)
    started_ms: int  # wall clock at registration
    version: str  # streamd's version

    def encode(self) -> bytes:
        return _encode(
            {
                "node_id": self.node_id,
                "native": self.native_address,
                "kinesis": self.kinesis_address,
                "started_ms": self.started_ms,
                "version": self.version,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> NodeRegistration:
        doc = _decode("node registration", raw)
        w = "node registration"
        return cls(
            check_name("node id", _field(w, doc, "node_id", str)),
            _field(w, doc, "native", str),
            _field(w, doc, "kinesis", str),
            _field(w, doc, "started_ms", int),
            _field(w, doc, "version", str),
        )


@dataclass(frozen=True, slots=True)
class ControllerRecord:
    """``controller/active``: who the controller is (the fencing token is the key's revision)."""

    node_id: str
    lease_id: int
    elected_ms: int

    def encode(self) -> bytes:
        return _encode(
            {"node_id": self.node_id, "lease_id": self.lease_id, "elected_ms": self.elected_ms}
        )

    @classmethod
    def decode(cls, raw: bytes) -> ControllerRecord:
        w = "controller record"
        doc = _decode(w, raw)
        return cls(
            _field(w, doc, "node_id", str),
            _field(w, doc, "lease_id", int),
            _field(w, doc, "elected_ms", int),
        )


@dataclass(frozen=True, slots=True)
class ShardAssignment:
    """``shards/<stream>/<shard_id>``: where a shard lives and who leads it.

    Invariants: ``replicas`` has no duplicate; ``leader`` is None or one of ``replicas``;
    ``leader_epoch`` only grows (every leader change, a return from unavailable included, is
    epoch + 1); status "unassigned" iff ``replicas`` is empty; status "ok" iff a leader is set.

    ``joining``: members of ``replicas`` just added (re-replication, a move, a drain) that do
    not vote yet (docs/replication.md, "Replica set changes"), never the leader; they joined at
    term ``joining_since`` (0 iff none joins). ``replicas[0]`` is the preferred leader.
    """

    stream: str
    shard_id: str
    replication_factor: int
    replicas: tuple[str, ...] = ()
    leader: str | None = None
    leader_epoch: int = 0
    status: ShardStatus = "unassigned"
    parents: tuple[str, ...] = field(default=())  # shard ids this one was split or merged from
    joining: tuple[str, ...] = ()
    joining_since: int = 0

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(f"shard assignment {self.stream}/{self.shard_id}: {problem}")

    @property
    def voters(self) -> tuple[str, ...]:
        """The replicas that count in quorums and may lead: those not joining."""
        return tuple(n for n in self.replicas if n not in self.joining)

    def problem(self) -> str:
        if self.replication_factor < 1:
            return f"replication factor {self.replication_factor}"
        if len(set(self.replicas)) != len(self.replicas):
            return "a node holds two replicas"
        if len(self.replicas) > self.replication_factor:
            return "more replicas than the replication factor"
        if self.leader is not None and self.leader not in self.replicas:
            return "the leader is not a replica"
        if self.leader_epoch < 0:
            return "negative epoch"
        if (self.status == "unassigned") != (not self.replicas):
            return f"status {self.status} with replicas {list(self.replicas)}"
        if (self.status == "ok") != (self.leader is not None):
            return f"status {self.status} with leader {self.leader}"
        if not set(self.joining) <= set(self.replicas) or self.leader in self.joining:
            return f"joining {list(self.joining)} with replicas {list(self.replicas)}"
        if bool(self.joining) != (self.joining_since > 0) or self.joining_since > self.leader_epoch:
            return f"joining {list(self.joining)} since term {self.joining_since}"
        return ""

    @property
    def key(self) -> str:
        return shard_key(self.stream, self.shard_id)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "stream": self.stream,
            "shard_id": self.shard_id,
            "rf": self.replication_factor,
            "replicas": list(self.replicas),
            "leader": self.leader,
            "epoch": self.leader_epoch,
            "status": self.status,
            "parents": list(self.parents),
        }
        if self.joining:  # absent otherwise: a document without joiners reads as before
            doc.update(joining=list(self.joining), joining_since=self.joining_since)
        return _encode(doc)

    @classmethod
    def decode(cls, raw: bytes) -> ShardAssignment:
        w = "shard assignment"
        doc = _decode(w, raw)
        leader = doc.get("leader")
        status = doc.get("status")
        if leader is not None and not isinstance(leader, str):
            raise KeyFormatError(f"{w}: field 'leader' is {leader!r:.80}")
        if status not in _STATUSES:
            raise KeyFormatError(f"{w}: field 'status' is {status!r:.80}")
        parents = _field(w, doc, "parents", list)
        if not all(isinstance(p, str) for p in parents):
            raise KeyFormatError(f"{w}: field 'parents' holds a non-string")
        try:
            return cls(
                check_name("stream", _field(w, doc, "stream", str)),
                check_name("shard id", _field(w, doc, "shard_id", str)),
                _field(w, doc, "rf", int),
                _node_list(w, doc, "replicas"),
                leader,
                _field(w, doc, "epoch", int),
                status,
                tuple(parents),
                _node_list(w, doc, "joining") if "joining" in doc else (),
                _field(w, doc, "joining_since", int) if "joining_since" in doc else 0,
            )
        except ValueError as exc:
            raise KeyFormatError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class CoordinatorPlacement:
    """``coordinators/<stream>/<group>``: the node that runs a consumer group's coordinator.

    Written first by a node, on the group's first request in cluster mode, *unplaced*
    (``node_id`` None, ``epoch`` 0; the value's ``"node"`` is null), with compare absent; from
    then on only the controller writes it: it places an unplaced one (epoch 1) and moves a lost
    one (epoch + 1). Invariants: ``node_id`` is None iff ``epoch`` is 0; ``epoch`` only grows.
    A coordinator fences its group writes on this document's ``mod_revision``, which every
    placement change moves.
    """

    stream: str
    group: str
    node_id: str | None
    epoch: int

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(f"coordinator placement {self.stream}/{self.group}: {problem}")

    def problem(self) -> str:
        if self.epoch < 0:
            return "negative epoch"
        if (self.node_id is None) != (self.epoch == 0):
            return f"node {self.node_id} at epoch {self.epoch} (unplaced iff epoch 0)"
        return ""

    @classmethod
    def unplaced(cls, stream: str, group: str) -> CoordinatorPlacement:
        """The first document of a group: no node yet (the controller places it)."""
        return cls(check_name("stream", stream), check_name("group", group), None, 0)

    @property
    def placed(self) -> bool:
        return self.node_id is not None

    @property
    def key(self) -> str:
        return coordinator_key(self.stream, self.group)

    def encode(self) -> bytes:
        return _encode(
            {"stream": self.stream, "group": self.group, "node": self.node_id, "epoch": self.epoch}
        )

    @classmethod
    def decode(cls, raw: bytes) -> CoordinatorPlacement:
        w = "coordinator placement"
        doc = _decode(w, raw)
        if "node" not in doc:
            raise KeyFormatError(f"{w}: field 'node' is missing")
        node = doc["node"]
        if node is not None and not (isinstance(node, str) and _NAME_RE.fullmatch(node)):
            raise KeyFormatError(f"{w}: field 'node' is {node!r:.80}")
        try:
            return cls(
                check_name("stream", _field(w, doc, "stream", str)),
                check_name("group", _field(w, doc, "group", str)),
                node,
                _field(w, doc, "epoch", int),
            )
        except ValueError as exc:
            raise KeyFormatError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class JoinReport:
    """``joined/<stream>/<shard_id>``: the shard's leader at ``term`` says the joining replica
    on ``node_id`` holds its log through the term's epoch-start batch (``JoinerCaughtUp``).
    Only a hint: the controller acts on it only while the shard document still lists the node
    joining since a term <= ``term``."""

    PREFIX: ClassVar[str] = JOINED_PREFIX
    stream: str
    shard_id: str
    node_id: str
    term: int

    @property
    def shard_key(self) -> str:
        """The key of the shard document it is about."""
        return shard_key(self.stream, self.shard_id)

    @property
    def key(self) -> str:
        stream, shard_id = check_name("stream", self.stream), check_name("shard id", self.shard_id)
        return f"{self.PREFIX}{stream}/{shard_id}"

    def encode(self) -> bytes:
        return _encode(
            {
                "stream": self.stream,
                "shard_id": self.shard_id,
                "node": self.node_id,
                "term": self.term,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        w = f"{cls.PREFIX[:-1]} report"
        doc = _decode(w, raw)
        try:
            return cls(
                check_name("stream", _field(w, doc, "stream", str)),
                check_name("shard id", _field(w, doc, "shard_id", str)),
                check_name("node id", _field(w, doc, "node", str)),
                _field(w, doc, "term", int),
            )
        except ValueError as exc:
            raise KeyFormatError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class DeclineReport(JoinReport):
    """``declined/<stream>/<shard_id>``: the node the document names leader at ``term`` declined
    to lead it (its log is under repair, or it has no core epoch left in the term); the
    controller names another live voter (checked: still that leader at that term)."""

    PREFIX: ClassVar[str] = DECLINED_PREFIX


@dataclass(frozen=True, slots=True)
class MoveRequest:
    """``moves/<stream>/<shard_id>``: an operator asks the shard's replica on ``from_node`` to
    move to ``to_node`` (``streamd cluster move-replica``)."""

    stream: str
    shard_id: str
    from_node: str
    to_node: str

    @property
    def shard_key(self) -> str:
        """The key of the shard document it is about."""
        return shard_key(self.stream, self.shard_id)

    @property
    def key(self) -> str:
        return move_key(self.stream, self.shard_id)

    def encode(self) -> bytes:
        return _encode(
            {
                "stream": self.stream,
                "shard_id": self.shard_id,
                "from": self.from_node,
                "to": self.to_node,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> MoveRequest:
        w = "move request"
        doc = _decode(w, raw)
        try:
            return cls(
                check_name("stream", _field(w, doc, "stream", str)),
                check_name("shard id", _field(w, doc, "shard_id", str)),
                check_name("node id", _field(w, doc, "from", str)),
                check_name("node id", _field(w, doc, "to", str)),
            )
        except ValueError as exc:
            raise KeyFormatError(str(exc)) from None
