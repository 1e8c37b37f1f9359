"""One simulated shard: replicas, network, disks, controller, clients, all in virtual time.

Single-threaded and seeded: one ``random.Random(seed)`` decides every delay, loss, fault and
choice, and one heap of timed actions (ties broken by insertion order) is the only scheduler,
so a seed replays exactly. The world is the replicas' driver: it feeds each ``Replica`` its
events and carries out the effects in order, as the trio driver will (messages through the
simulated network, writes to the node's ``MemoryLog``, fsyncs that take time and may stall).

With ``reconfig`` the schedule also changes the replica set (faults.py, ``draw_reconfig``):
a member lost for good is replaced by a spare node after a grace period, and a live member is
moved to a spare (the node left out keeps running, and may come back later with its stale
log). The model controller makes one change at a time: the new member joins (``Lead.joining``)
and becomes a voter, under a new epoch, only once a leader reported it caught up
(``JoinerCaughtUp``), as the etcd controller does.

A run has two phases. In the fault phase the schedule (faults.py) strikes while clients write
and readers read. Then every fault heals (crashed replicas restart, partitions close, disks
empty) and the run goes on until the cluster has converged (one leader serving, every replica
whole and holding the same log up to the high watermark, every client's last write acked) or
the liveness budget runs out, which fails the run.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ...clock import VirtualClock
from ...replication import messages as m
from ...replication.errors import ReplicationBroken
from ...replication.meta import ReplicaMeta
from ...replication.replica import Replica, ReplicaConfig
from ...replication.roles import Role
from ...storage.logstore import StoreFullError
from ...storage.memlog import MemoryLog
from .checker import Checker, Violation
from .faults import Fault, NetProfile, draw_net, draw_reconfig, draw_schedule
from .node import Node
from .workload import Client, Reader

ReplicaFactory = Callable[[int, MemoryLog, ReplicaMeta, ReplicaConfig, int], Replica]
TRACE_TAIL = 40
TRACE_ALL = 1 << 20


@dataclass(frozen=True)
class SimConfig:
    replicas: int = 3
    fault_phase_ms: int = 1_500
    faults_max: int = 10
    liveness_ms: int = 6_000
    clients: int = 2
    readers: int = 1
    tick_ms: int = 20
    failover_ms: int = 400  # the controller replaces a leader not serving for this long
    fsync_ms_max: int = 5
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    factory: ReplicaFactory | None = None
    trace_tail: int = TRACE_TAIL
    # Hunting profile (mutant tests): churn leaders through the whole fault phase, and ship
    # one batch per message.
    hunt: bool = False
    # Replica-set changes (replace a lost member, move a live one) among ``spares`` extra nodes.
    reconfig: bool = False
    spares: int = 2


@dataclass
class SimResult:
    seed: int
    replicas: int
    ok: bool
    failure: str
    trace_hash: str
    trace_tail: list[str]
    faults: list[str]
    end_ms: int
    steps: int
    acks: int
    reads: int
    epochs: int

    flags: str = ""

    def replay_command(self) -> str:
        return (
            f"python -m streamd.testing.sim --seed {self.seed} --replicas {self.replicas}"
            f"{self.flags} -v"
        )


class World:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.clock = VirtualClock()
        spares = config.spares if config.reconfig else 0
        self.nodes = [Node(i) for i in range(config.replicas + spares)]
        self.ids = tuple(range(config.replicas + spares))  # every node, spares included
        # The controller's replica set and who of it is still joining (not a voter yet);
        # the set each epoch was handed out with (the checker counts copies in it).
        self.members: tuple[int, ...] = tuple(range(config.replicas))
        self.joining: tuple[int, ...] = ()
        self.joined_epoch = 0  # the epoch the joining member entered the set at
        self.members_at: dict[int, tuple[int, ...]] = {0: self.members}
        self.changes = 0
        self.net: NetProfile = draw_net(self.rng)
        # Message size from the seed too: one batch per append splits what a leader ships over
        # many messages, which is where the subtle interleavings live.
        self.replica_config = replace(
            config.replica,
            batches_per_message_max=1 if config.hunt else self.rng.choice((1, 2, 8)),
        )
        self.schedule: list[Fault] = draw_schedule(
            self.rng, config.replicas, config.fault_phase_ms, config.faults_max
        )
        self.reconfig: list[Fault] = (
            draw_reconfig(self.rng, config.replicas, config.fault_phase_ms)
            if config.reconfig
            else []
        )
        self.blocked: Counter[tuple[int, int]] = Counter()
        self.checker = Checker([n.log for n in self.nodes], config.replicas, self._sets_between)
        self._queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._seq = 0
        self.steps = 0
        self._hash = hashlib.sha256()
        self._tail: deque[str] = deque(maxlen=config.trace_tail)
        self.epoch = 0  # the controller's: the newest epoch it has handed out
        self.leader_hint: int | None = None
        self.healed = False
        self.churn_until = config.fault_phase_ms if config.hunt else 0
        self._failover_ms = config.failover_ms // 3 if config.hunt else config.failover_ms
        self.last_serving_ms = 0
        self.clients = [Client(self, c) for c in range(config.clients)]
        self.readers = [Reader(self, r) for r in range(config.readers)]
        self.write_owner: dict[int, Client] = {}
        self.read_owner: dict[int, Reader] = {}
        self._ids = 0

    # -- scheduling and trace ----------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.clock.monotonic_ms()

    def at(self, at_ms: int, action: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at_ms, self._seq, action, args))

    def after(self, delay_ms: int, action: str, *args: Any) -> None:
        self.at(self.now + delay_ms, action, *args)

    def new_id(self) -> int:
        self._ids += 1
        return self._ids

    def trace(self, line: str) -> None:
        text = f"{self.now} {line}"
        self._hash.update(text.encode())
        self._hash.update(b"\n")
        self._tail.append(text)

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> SimResult:
        failure = ""
        try:
            self._start()
            self._loop()
        except (Violation, ReplicationBroken, AssertionError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            self.trace(f"FAILED {failure}")
        return SimResult(
            seed=self.seed,
            replicas=self.config.replicas,
            ok=not failure,
            failure=failure,
            trace_hash=self._hash.hexdigest(),
            trace_tail=list(self._tail),
            faults=[f.describe() for f in self.schedule + self.reconfig],
            end_ms=self.now,
            steps=self.steps,
            acks=self.checker.acks,
            reads=self.checker.reads,
            epochs=self.epoch,
            flags=self._flags(),
        )

    def _flags(self) -> str:
        from .mutants import MUTANTS

        flags = " --hunt" if self.config.hunt else ""
        flags += " --reconfig" if self.config.reconfig else ""
        for name, cls in MUTANTS.items():
            if self.config.factory is cls:
                flags += f" --mutant {name}"
        return flags

    def _start(self) -> None:
        for node_id in self.members:
            self._boot(self.nodes[node_id])
        for fault in self.schedule:
            self.at(fault.at_ms, "fault", fault, True)
        for change in self.reconfig:
            self.at(change.at_ms, "reconfig", change)
        self.at(self.config.fault_phase_ms, "heal")
        self.at(self.config.fault_phase_ms + self.config.liveness_ms, "deadline")
        self.at(0, "tick")
        self.at(0, "controller")
        self._elect(self.rng.randrange(self.config.replicas))
        for client in self.clients:
            self.after(self.rng.randint(1, 30), "client", client, 0)
        for reader in self.readers:
            self.after(self.rng.randint(1, 60), "reader", reader)

    def _loop(self) -> None:
        while self._queue:
            at_ms, _, action, args = heapq.heappop(self._queue)
            self.clock.advance_to_ms(at_ms)
            self.steps += 1
            if action == "deadline":
                self.checker.fail(
                    f"liveness: not converged {self.config.liveness_ms} ms after heal"
                )
            getattr(self, "_do_" + action)(*args)
            if self.healed and self._converged():
                self._finish()
                return

    # -- replicas ----------------------------------------------------------------------------

    def _boot(self, node: Node) -> None:
        node.incarnation += 1
        node.sync_running = False
        node.sync_again = None
        node.role = Role.FOLLOWER.value
        factory = self.config.factory or Replica
        replica = factory(node.id, node.log, node.meta, self.replica_config, self.now)
        node.replica = replica
        self.trace(f"n{node.id} boot #{node.incarnation} end={node.log.log_end()} {node.meta}")
        self._apply(node, replica.start())
        damaged = node.log.first_damaged()
        if damaged is not None:
            self._feed(node, m.Damaged(damaged))

    def _feed(self, node: Node, event: m.Event) -> None:
        """Deliver ``event`` to a node's replica (later if paused; never if it is down)."""
        replica = node.replica
        if replica is None:
            return
        if node.paused_until > self.now:
            self.at(node.paused_until, "feed", node.id, node.incarnation, event)
            return
        self._apply(node, replica.step(event))

    def _do_feed(self, node_id: int, incarnation: int, event: m.Event) -> None:
        node = self.nodes[node_id]
        if node.incarnation == incarnation:
            self._feed(node, event)

    def _apply(self, node: Node, effects: list[m.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, m.Send):
                self._send(effect.message)
            elif isinstance(effect, m.AppendBatches):
                try:
                    node.log.append(effect.batches)
                except StoreFullError:
                    self.trace(f"n{node.id} disk full")
                    self._feed(node, m.StorageFailed("disk full", node.meta))
                    return
            elif isinstance(effect, m.TruncateTo):
                self.checker.on_truncate(node, effect.offset, node.meta.repair_to is not None)
                node.log.truncate_to(effect.offset)
                self.trace(f"n{node.id} truncate {effect.offset}")
            elif isinstance(effect, m.SyncLog):
                self._sync(node, effect.generation)
            elif isinstance(effect, m.PersistMeta):
                node.meta = effect.meta
            else:
                self._outcome(node, effect)

    def _outcome(self, node: Node, effect: m.Effect) -> None:
        replica = node.replica
        assert replica is not None
        if isinstance(effect, m.HighWatermark):
            self.checker.on_hw(node, effect.hw, node.role == Role.LEADING.value)
        elif isinstance(effect, m.WriteDone):
            self.checker.on_ack(node, effect.base_offset)
            self.trace(f"n{node.id} ack w{effect.write_id}@{effect.base_offset} e{effect.epoch}")
            self._reply(self.write_owner.get(effect.write_id), effect)
        elif isinstance(effect, m.WriteFailed):
            self._reply(self.write_owner.get(effect.write_id), effect)
        elif isinstance(effect, m.ReadDone):
            self.checker.on_read(effect.batches)
            self._reply(self.read_owner.get(effect.read_id), effect)
        elif isinstance(effect, m.ReadFailed):
            self._reply(self.read_owner.get(effect.read_id), effect)
        elif isinstance(effect, m.RoleChanged):
            node.role = effect.role
            self.trace(
                f"n{node.id} role {effect.role} e{effect.epoch} leader={effect.leader}: "
                f"{effect.reason}"
            )
        elif isinstance(effect, m.LeadDeclined):
            self.trace(f"n{node.id} declines e{effect.epoch}: {effect.reason}")
            self.after(20, "controller_pick")
        elif isinstance(effect, m.JoinerCaughtUp):
            self._joiner_caught_up(effect)

    def _reply(self, owner: Client | Reader | None, effect: m.Effect) -> None:
        if owner is None or self.rng.random() < self.net.drop:
            return  # the answer is lost: the client's outcome is ambiguous
        self.after(self._delay(), "answer", owner, effect)

    def _do_answer(self, owner: Client | Reader, effect: m.Effect) -> None:
        owner.answer(effect)

    def _do_client(self, client: Client, attempt: int) -> None:
        client.wake(attempt)

    def _do_reader(self, reader: Reader) -> None:
        reader.wake()

    def _sync(self, node: Node, generation: int) -> None:
        if node.sync_running:
            node.sync_again = generation
            return
        node.sync_running = True
        took = self.rng.randint(1, self.config.fsync_ms_max)
        done = max(self.now + took, node.stall_until)
        self.at(done, "synced", node.id, node.incarnation, generation)

    def _do_synced(self, node_id: int, incarnation: int, generation: int) -> None:
        node = self.nodes[node_id]
        if node.incarnation != incarnation or node.replica is None:
            return
        end = node.log.sync()
        node.sync_running = False
        self._feed(node, m.Durable(end, generation))
        if node.sync_again is not None and not node.sync_running:
            again, node.sync_again = node.sync_again, None
            self._sync(node, again)

    def _do_tick(self) -> None:
        for node in self.nodes:
            if node.replica is not None and node.paused_until <= self.now:
                self._apply(node, node.replica.step(m.Tick(self.now)))
        self.after(self.config.tick_ms, "tick")

    # -- network -----------------------------------------------------------------------------

    def _delay(self) -> int:
        return self.rng.randint(self.net.delay_ms_min, self.net.delay_ms_max)

    def _send(self, message: m.Message) -> None:
        if self.blocked[(message.src, message.dst)] or self.rng.random() < self.net.drop:
            return
        hunting = self.config.hunt and not self.healed
        if hunting and self._epoch_start_in(message) and self.rng.random() < 0.8:
            return  # hunting: a new epoch's first batch often fails to reach a follower
        copies = 2 if self.rng.random() < self.net.duplicate else 1
        for _ in range(copies):
            self.after(self._delay(), "deliver", message)

    @staticmethod
    def _epoch_start_in(message: m.Message) -> bool:
        return isinstance(message, m.Append) and any(b.control for b in message.batches)

    def _do_deliver(self, message: m.Message) -> None:
        if self.blocked[(message.src, message.dst)]:
            return  # cut while in flight
        self.steps += 1
        self._feed(self.nodes[message.dst], m.Receive(message))

    def to_node(self, node_id: int, event: m.Event) -> None:
        """A client's request, through the network (lost with the drop rate)."""
        if self.rng.random() < self.net.drop:
            return
        self.after(self._delay(), "request", node_id, event)

    def _do_request(self, node_id: int, event: m.Event) -> None:
        self._feed(self.nodes[node_id], event)

    # -- the controller (a model of part 3's etcd-backed one) ---------------------------------

    def _elect(self, node_id: int) -> None:
        self.epoch += 1
        self.leader_hint = node_id
        self.last_serving_ms = self.now
        self.trace(f"controller: n{node_id} leads e{self.epoch}")
        self.members_at[self.epoch] = self.members
        lead = m.Lead(self.epoch, self.members, self.joining)
        self.after(self.rng.randint(1, 5), "feed_lead", node_id, lead)
        if self.now < self.churn_until:
            cut = Fault(0, "partition", node_id, -1, (), self.rng.randint(30, 300))
            self.after(self.rng.randint(5, 60), "fault", cut)

    def _do_feed_lead(self, node_id: int, lead: m.Lead) -> None:
        self._feed(self.nodes[node_id], lead)

    def _do_controller(self) -> None:
        """Replace the named leader once it has not served its epoch for ``failover_ms`` (in
        part 3: its etcd lease lapsed, or it reported trouble)."""
        named = self.nodes[self.leader_hint] if self.leader_hint is not None else None
        if named is not None and self._serving(named) and named.meta.epoch == self.epoch:
            self.last_serving_ms = self.now
        elif self.now - self.last_serving_ms >= (
            self._failover_ms if not self.healed else self.config.failover_ms
        ):
            self._do_controller_pick()
        self.after(100, "controller")

    def _do_controller_pick(self) -> None:
        voters = [n for n in self.members if n not in self.joining]
        alive = [n for n in voters if self.nodes[n].alive] or voters
        self._elect(self.rng.choice(alive))

    def _sets_between(self, first: int, last: int) -> set[int]:
        """The members of the replica sets the controller handed epochs ``first``..``last``
        out with."""
        found = {n for e, s in self.members_at.items() if first <= e <= last for n in s}
        return found or set(self.members)

    # -- replica-set changes (the model of the controller's re-replication) -------------------

    def _do_reconfig(self, change: Fault) -> None:
        """``replace``: the member at that position is lost for good now, and replaced once
        the grace (``duration_ms``) is over; ``move``: it is moved to a spare at once."""
        node_id = self.members[change.node]
        others = [self.nodes[n] for n in self.members if n != node_id]
        joiner_beside = bool(self.joining) and node_id not in self.joining
        if change.kind == "replace" and (joiner_beside or any(self._unsound(n) for n in others)):
            # A loss for good beside a joiner (no vote yet), a lost or a damaged member leaves
            # no whole majority of voters, which no protocol survives (the shard waits, safe,
            # for the lost node): strike later, or not at all after heal.
            if not self.healed:
                self.after(50, "reconfig", change)
            return
        self.trace(f"reconfig {change.describe()} (n{node_id})")
        if change.kind == "replace":
            node = self.nodes[node_id]
            self._crash(node)
            node.lost = True
            self.after(change.duration_ms, "change", node_id)
        else:
            self._do_change(node_id)

    @staticmethod
    def _unsound(node: Node) -> bool:
        """Lost for good, or holding a damaged log (found yet or not)."""
        return node.lost or not node.meta.whole or node.log.first_damaged() is not None

    def _do_change(self, out: int) -> None:
        """Replace member ``out`` by a spare: one change at a time, so wait while one joins."""
        if out not in self.members:
            return
        spares = [n.id for n in self.nodes if n.id not in self.members and not n.lost]
        others = [self.nodes[n] for n in self.members if n != out]
        damaged = any(self._unsound(n) for n in others)
        if (self.joining and out not in self.joining) or damaged or not spares:
            # One change at a time (a joiner itself may be replaced: it has no vote), and none
            # while another member is lost or refetches a damaged log: the change's new epoch
            # must fence a whole majority of voters, which the old leader needed no more.
            self.after(50, "change", out)
            return
        new = self.rng.choice(spares)
        self.members = tuple(new if n == out else n for n in self.members)
        self.joining = (new,)
        self.changes += 1
        node = self.nodes[new]
        self.trace(f"controller: n{out} -> n{new}, members {list(self.members)}, joining")
        if node.replica is None:
            self._do_restart(new)  # a spare's first start, or one moved out earlier and down
        voters = [n for n in self.members if n not in self.joining]
        alive = [n for n in voters if self.nodes[n].alive] or voters
        leader = self.leader_hint if self.leader_hint in alive else self.rng.choice(alive)
        self._elect(leader)
        self.joined_epoch = self.epoch

    def _joiner_caught_up(self, effect: m.JoinerCaughtUp) -> None:
        """A leader of an epoch the joiner was already joining in says it holds the committed
        prefix: it becomes a voter, under a new epoch (the same leader if it still serves)."""
        if effect.replica not in self.joining or effect.epoch < self.joined_epoch:
            return
        if self.members_at.get(effect.epoch) != self.members:
            return
        self.trace(f"controller: n{effect.replica} caught up (e{effect.epoch}): a voter now")
        self.joining = ()
        leader = self.leader_hint
        if leader is None or not self.nodes[leader].alive:
            self._do_controller_pick()
        else:
            self._elect(leader)

    @staticmethod
    def _serving(node: Node) -> bool:
        return node.replica is not None and node.replica.serving()

    # -- faults ------------------------------------------------------------------------------

    def _do_fault(self, fault: Fault, scheduled: bool = False) -> None:
        if self.healed:
            return
        if self.config.reconfig and scheduled:  # positions in the current replica set
            fault = replace(
                fault,
                node=self.members[fault.node],
                other=self.members[fault.other] if fault.other >= 0 else -1,
                group=tuple(self.members[g] for g in fault.group),
            )
        if fault.kind.endswith("_leader"):
            target = self.leader_hint if self.leader_hint is not None else fault.node
            kind = "partition" if fault.kind == "isolate_leader" else "crash"
            fault = replace(fault, kind=kind, node=target)
        self.trace(f"fault {fault.describe()}")
        node = self.nodes[fault.node]
        kind = fault.kind
        if kind == "elect":
            if fault.node in self.joining or fault.node not in self.members:
                return
            self._elect(fault.node)
        elif kind == "crash":
            self._crash(node)
            self.after(fault.duration_ms, "restart", node.id)
        elif kind == "pause":
            node.paused_until = max(node.paused_until, self.now + fault.duration_ms)
        elif kind == "fsync_stall":
            node.stall_until = max(node.stall_until, self.now + fault.duration_ms)
        elif kind == "disk_full":
            node.full_count += 1
            node.log.full = True
            self.after(fault.duration_ms, "undo_full", node.id)
        elif kind == "bitflip":
            self._bitflip(node)
        elif kind == "churn":
            self.churn_until = max(self.churn_until, self.now + fault.duration_ms)
        else:
            self._cut(fault)

    def _cut_pairs(self, fault: Fault) -> list[tuple[int, int]]:
        n = fault.node
        if fault.kind == "oneway":
            return [(n, fault.other)]
        if fault.kind == "split":
            side = set(fault.group)
            return [(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)]
        return [(n, o) for o in self.ids if o != n] + [(o, n) for o in self.ids if o != n]

    def _cut(self, fault: Fault) -> None:
        pairs = self._cut_pairs(fault)
        if fault.kind == "flap":
            self._do_flap(pairs, self.now + fault.duration_ms, True)
            return
        for pair in pairs:
            self.blocked[pair] += 1
        self.after(fault.duration_ms, "uncut", pairs)

    def _do_uncut(self, pairs: list[tuple[int, int]]) -> None:
        for pair in pairs:
            if self.blocked[pair] > 0:
                self.blocked[pair] -= 1

    def _do_flap(self, pairs: list[tuple[int, int]], until_ms: int, cut: bool) -> None:
        if self.healed or self.now >= until_ms:
            return
        span = self.rng.randint(20, 120)
        if cut:
            for pair in pairs:
                self.blocked[pair] += 1
            self.after(span, "uncut", pairs)
        self.after(span, "flap", pairs, until_ms, not cut)

    def _crash(self, node: Node) -> None:
        if node.replica is None:
            return
        node.replica = None
        node.log.crash(self.rng)
        node.paused_until = 0
        self.trace(f"n{node.id} crash, log end now {node.log.log_end()}")

    def _do_restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.replica is not None or node.lost:
            return
        if node.log.recover():
            self.trace(f"n{node.id} recovery cut a torn tail at {node.log.log_end()}")
        self.checker.on_restart(node)
        self._boot(node)

    def _do_undo_full(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.full_count -= 1
        node.log.full = node.full_count > 0

    def _bitflip(self, node: Node) -> None:
        if any(not n.meta.whole or n.log.first_damaged() is not None for n in self.nodes):
            return  # one damaged replica at a time keeps a whole majority for liveness
        if self.joining or any(self.nodes[n].lost for n in self.members):
            return  # a joiner votes nowhere yet, a lost member neither: no more losses
        damaged = node.log.flip_bit(self.rng)
        if damaged is None:
            return
        self.trace(f"n{node.id} bit flip in the batch at {damaged}")
        self.after(self.rng.randint(5, 200), "scrub", node.id)

    def _do_scrub(self, node_id: int) -> None:
        node = self.nodes[node_id]
        damaged = node.log.first_damaged()
        if damaged is not None:
            self._feed(node, m.Damaged(damaged))

    # -- healing and the end -----------------------------------------------------------------

    def _do_heal(self) -> None:
        self.healed = True
        self.trace("heal")
        self.blocked.clear()
        for node in self.nodes:
            node.paused_until = min(node.paused_until, self.now)
            node.stall_until = 0
            node.full_count = 0
            node.log.full = False
            if node.replica is None:
                if node.id in self.members or node.incarnation:
                    self._do_restart(node.id)
            else:
                self._do_scrub(node.id)
        for client in self.clients:
            client.last_write()

    def _converged(self) -> bool:
        leaders = [n for n in self.nodes if self._serving(n)]
        if len(leaders) != 1 or any(not c.done() for c in self.clients) or self.joining:
            return False
        leader = leaders[0].replica
        assert leader is not None
        if self.config.reconfig and self.members_at.get(leader.epoch) != self.members:
            return False  # the one serving still leads an older replica set
        for node in (self.nodes[n] for n in self.members):
            replica = node.replica
            if (
                replica is None
                or not node.meta.whole
                or replica.hw != leader.log_end
                or node.log.log_end() != leader.log_end
                or node.log.durable_end() != leader.log_end
            ):
                return False
        return True

    def _finish(self) -> None:
        leader = next(n for n in self.nodes if self._serving(n))
        assert leader.replica is not None
        ordered = [leader] + [self.nodes[n] for n in self.members if n != leader.id]
        self.checker.final(ordered, leader.replica.hw)
        self.trace(f"converged: leader n{leader.id} e{leader.replica.epoch} hw {leader.replica.hw}")
