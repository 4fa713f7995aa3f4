"""Deterministic simulation of a Raft cluster on a simulated network and clock.

Every source of randomness derives from one seed, so a failing schedule is
replayed exactly with ``python -m tests.raftsim --seed N``. After every step
the simulator checks election safety, log matching, leader completeness and
state-machine safety; at the end it heals everything, checks that every
acknowledged proposal was applied on every member, and checks the clients'
history of writes and ReadIndex reads for linearizability with chaos.checker.

Crashes are power losses: whatever a node wrote but did not fsync (a Ready
with ``must_sync`` False is written, not synced) is gone. Crash points sit
inside the Ready loop too — after the leader's own appends left but before
the persist, and after the persist but before votes and append replies leave —
and such a crashed node comes back a few ticks later while messages to it are
still in flight. The driver also checks each promise as it leaves: a granted
vote or an append reply is only sent once what it promises is fsync'd.

Run many schedules: ``python -m tests.raftsim --schedules 100000``.
"""

from __future__ import annotations

import argparse
import heapq
import random
import struct
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from chaos.checker import INVALID, check
from chaos.history import FAIL, INFO, OK, Op, save
from node.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    Raft,
    Ready,
    Role,
    Snapshot,
)

STEPS_PER_TICK = 4
KEYS = 3  # few keys, so reads and writes collide
# what a leader may send while it persists (as node/server's driver does); everything else waits
EARLY = (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.TIMEOUT_NOW)


class SafetyViolation(AssertionError):
    pass


def encode_state(items: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for idx, data in items:
        out += struct.pack(">QI", idx, len(data)) + data
    return bytes(out)


def decode_state(blob: bytes) -> list[tuple[int, bytes]]:
    items, pos = [], 0
    while pos < len(blob):
        idx, n = struct.unpack_from(">QI", blob, pos)
        pos += 12
        items.append((idx, blob[pos : pos + n]))
        pos += n
    return items


def split_write(data: bytes) -> tuple[str, str]:
    """A client write's entry is b"key=value"; values are unique."""
    k, _, v = data.partition(b"=")
    return k.decode(), v.decode()


@dataclass
class Storage:
    """One node's disk as a power loss sees it: what was written (the page cache)
    and what was fsync'd. A crash keeps only the fsync'd part."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    synced_hs: HardState = field(default_factory=HardState)
    synced_snap: Snapshot = field(default_factory=Snapshot)
    synced_entries: list[Entry] = field(default_factory=list)

    def write(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + [copy_entry(e) for e in rd.entries]
        if rd.hard_state is not None:
            self.hard_state = replace(rd.hard_state)

    def fsync(self) -> None:
        # entries are never mutated once stored, so sharing them is safe
        self.synced_hs, self.synced_snap, self.synced_entries = (
            replace(self.hard_state),
            self.snapshot,
            list(self.entries),
        )

    def save(self, rd: Ready) -> None:
        """Persist one Ready as node/storage does: write, and fsync only when it must."""
        self.write(rd)
        if rd.must_sync:
            self.fsync()

    def save_snapshot(self, snap: Snapshot, offset: int) -> None:
        """An application snapshot: its file is written, fsync'd and renamed, then the WAL before it is released."""
        self.snapshot = self.synced_snap = snap
        self.entries = [e for e in self.entries if e.index > offset]
        self.synced_entries = [e for e in self.synced_entries if e.index > offset]

    def power_loss(self) -> None:
        self.hard_state, self.snapshot, self.entries = (
            replace(self.synced_hs),
            self.synced_snap,
            list(self.synced_entries),
        )

    def synced_term(self, index: int) -> int | None:
        """Term of the fsync'd entry at index (None: not durable here)."""
        for e in reversed(self.synced_entries):
            if e.index == index:
                return e.term
            if e.index < index:
                break
        if index == self.synced_snap.index:
            return self.synced_snap.term
        return None

    def synced_last(self) -> int:
        return self.synced_entries[-1].index if self.synced_entries else self.synced_snap.index


def copy_entry(e: Entry) -> Entry:
    return Entry(e.index, e.term, e.type, e.data)


def copy_msg(m: Message) -> Message:
    """Messages cross the 'wire' by value, like the real transport (positional: replace() is slow)."""
    ents = [Entry(e.index, e.term, e.type, e.data) for e in m.entries] if m.entries else []
    return Message(
        m.type, m.to, m.frm, m.term, m.log_term, m.index, ents, m.commit, m.reject, m.reject_hint, m.snapshot, m.context
    )


@dataclass
class PendingRead:
    op: Op
    floor: int  # the highest index committed anywhere when the read was invoked
    index: int | None = None  # the ReadState's index, once the leader confirmed it


@dataclass
class SimNode:
    id: int
    storage: Storage
    raft: Raft | None = None
    state: list[tuple[int, bytes]] = field(default_factory=list)  # applied (index, data)
    kv: dict[str, str] = field(default_factory=dict)  # the key-value view of `state`
    seen: set[bytes] = field(default_factory=set)  # writes applied (a duplicated proposal applies once)
    applied: int = 0
    restarts: int = 0
    reads: dict[bytes, PendingRead] = field(default_factory=dict)  # context -> read served by this node

    def load_state(self, items: list[tuple[int, bytes]]) -> None:
        self.state = items
        self.kv, self.seen = {}, set()
        for _, data in items:
            self.apply_kv(data)

    def apply_kv(self, data: bytes) -> None:
        if data not in self.seen:
            self.seen.add(data)
            k, v = split_write(data)
            self.kv[k] = v


class Sim:
    def __init__(
        self,
        seed: int,
        n: int,
        *,
        drop: float = 0.0,
        dup: float = 0.0,
        max_delay: int = 4,
        compact_every: int = 30,
        election_tick: int = 10,
        check_every: int = 40,
        crash_rate: float = 0.0,
        read_rate: float = 0.0,
        check_promises: bool = True,
    ) -> None:
        """check_promises: check each promise as it is made (a vote or append reply is durable when it
        leaves, a read index covers everything committed before the read began); without them only
        the end-to-end checks remain (safety after crashes, lost acknowledged writes, linearizability)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.crng = random.Random(seed ^ 0xC0FFEE)  # crash points and clients: their own stream
        self.drop, self.dup, self.max_delay = drop, dup, max_delay
        self.compact_every = compact_every
        self.election_tick = election_tick
        self.check_every = check_every
        self.crash_rate = crash_rate  # chance that a Ready ends in a crash (at a point inside the loop)
        self.read_rate = read_rate  # chance per tick that a client issues a ReadIndex read
        self.check_promises = check_promises
        self.now = 0
        self.net: list[tuple[int, int, Message]] = []  # (deliver_at, seq, msg)
        self.seq = 0
        self.blocked: set[tuple[int, int]] = set()  # directed (from, to) pairs cut
        self.nodes: dict[int, SimNode] = {}
        self.leaders: dict[int, int] = {}  # term -> leader
        self.entries_seen: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.applied_at: dict[int, bytes] = {}  # index -> data, first node to apply it
        self.proposals: dict[bytes, int] = {}  # data -> proposing node
        self.acked: set[bytes] = set()
        self.next_prop = 0
        self.next_id = n + 1
        self.commit_hw = 0  # the highest commit index any node has known
        self.restart_at: dict[int, int] = {}  # node -> step at which a crashed node comes back
        self.history: list[Op] = []
        self.writes: dict[bytes, Op] = {}
        self.events: list[str] = []
        for i in range(1, n + 1):
            node = SimNode(i, Storage())
            self.nodes[i] = node
            self._start(node)
            assert node.raft is not None
            node.raft.bootstrap(range(1, n + 1))
            # creating a member makes its bootstrap durable before anything else can happen
            rd = node.raft.ready()
            node.storage.write(rd)
            node.storage.fsync()
            node.raft.advance(rd)

    # -- node lifecycle --------------------------------------------------
    def _start(self, node: SimNode) -> None:
        st = node.storage
        cfg = Config(node.id, election_tick=self.election_tick, heartbeat_tick=1, max_inflight=8, max_msg_entries=16)
        node.raft = Raft(
            cfg,
            random.Random(self.seed * 1_000_003 + node.id * 7919 + node.restarts),
            hard_state=replace(st.hard_state),
            snapshot=st.snapshot,
            entries=[copy_entry(e) for e in st.entries],
        )
        node.load_state(decode_state(st.snapshot.data))
        node.applied = st.snapshot.index

    def crash(self, nid: int, where: str = "") -> None:
        """Power loss: the process dies and every byte not yet fsync'd is gone."""
        node = self.nodes[nid]
        if node.raft is not None:
            node.raft = None
            node.storage.power_loss()
            node.reads.clear()  # their clients see an error: unknown outcome
            self.events.append(f"t={self.now} crash {nid}{where}")

    def restart(self, nid: int) -> None:
        node = self.nodes[nid]
        self.restart_at.pop(nid, None)
        if node.raft is None:
            node.restarts += 1
            self._start(node)
            self.events.append(f"t={self.now} restart {nid}")

    def add_node(self) -> SimNode:
        nid = self.next_id
        self.next_id += 1
        node = SimNode(nid, Storage())
        self.nodes[nid] = node
        self._start(node)
        return node

    # -- network -----------------------------------------------------------
    def partition(self, *groups: set[int]) -> None:
        self.blocked = set()
        where = {nid: gi for gi, g in enumerate(groups) for nid in g}
        for a in self.nodes:
            for b in self.nodes:
                if a != b and where.get(a, -1 - a) != where.get(b, -1 - b):
                    self.blocked.add((a, b))
        self.events.append(f"t={self.now} partition {[sorted(g) for g in groups]}")

    def heal(self) -> None:
        self.blocked = set()
        self.events.append(f"t={self.now} heal")

    def _send(self, m: Message) -> None:
        lost = (m.frm, m.to) in self.blocked or (self.drop and self.rng.random() < self.drop)
        if lost:
            self._snap_failed(m)
            return
        copies = 2 if self.dup and self.rng.random() < self.dup else 1
        for _ in range(copies):
            at = self.now + 1 + self.rng.randrange(self.max_delay)
            self.seq += 1
            heapq.heappush(self.net, (at, self.seq, copy_msg(m)))

    def _snap_failed(self, m: Message) -> None:
        if m.type == MsgType.SNAP:
            sender = self.nodes.get(m.frm)
            if sender is not None and sender.raft is not None:
                sender.raft.report_snapshot(m.to, ok=False)

    def _deliver_due(self) -> None:
        net = self.net
        if not net or net[0][0] > self.now:
            return
        due = []
        while net and net[0][0] <= self.now:
            due.append(heapq.heappop(net))
        self.rng.shuffle(due)
        for _, _, m in due:
            node = self.nodes.get(m.to)
            if node is None or node.raft is None or (m.frm, m.to) in self.blocked:
                self._snap_failed(m)
                continue
            node.raft.step(m)
            if m.type == MsgType.SNAP:
                sender = self.nodes.get(m.frm)
                if sender is not None and sender.raft is not None:
                    sender.raft.report_snapshot(m.to, ok=True)

    # -- the Ready loop (ordered as node/server's driver) ---------------------
    def _crash_point(self, node: SimNode, rd: Ready, where: str) -> bool:
        if not self.crash_rate or self.crng.random() >= self.crash_rate:
            return False
        self.crash(node.id, f" ({where}; unsynced term/vote/entries lost)")
        self.restart_at[node.id] = self.now + self.crng.randint(1, 3 * STEPS_PER_TICK)
        return True

    def _process(self, node: SimNode) -> None:
        r = node.raft
        assert r is not None
        for _ in range(20):
            if not r.has_ready():
                return
            rd = r.ready()
            for e in rd.entries:
                key = (e.index, e.term)
                val = (int(e.type), e.data)
                old = self.entries_seen.setdefault(key, val)
                if old != val:
                    self._fail(f"log matching: node {node.id} entry {key} differs from another node's")
            if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
                self._check_leader(node)
            early = [m for m in rd.messages if r.role == Role.LEADER and m.type in EARLY]
            late = [m for m in rd.messages if not (r.role == Role.LEADER and m.type in EARLY)]
            for m in early:  # the leader's appends go out while it persists
                self._send(m)
            persists = bool(rd.entries or rd.hard_state is not None or rd.snapshot is not None)
            if (persists or late) and self._crash_point(node, rd, "before persisting"):
                return
            node.storage.save(rd)
            if (persists or late) and self._crash_point(node, rd, "after persisting, before sending"):
                return
            for m in late:  # votes and append replies only once durable
                if self.check_promises:
                    self._check_durable(node, m)
                self._send(m)
            if rd.snapshot is not None:
                self._apply_snapshot(node, rd.snapshot)
            for e in rd.committed_entries:
                self._apply(node, e)
            for rs in rd.read_states:
                pr = node.reads.get(rs.context)
                if pr is not None and pr.index is None:
                    if self.check_promises and rs.index < pr.floor:
                        self._fail(
                            f"read index safety: node {node.id} got read index {rs.index} for {pr.op.describe()}, "
                            f"but index {pr.floor} was committed before the read began"
                        )
                    pr.index = rs.index
            self._serve_reads(node)
            r.advance(rd)
            if r.log.committed > self.commit_hw:
                self.commit_hw = r.log.committed
            if self.check_promises and r.role == Role.LEADER:
                pr_self = r.prs.get(r.id)
                if pr_self is not None and pr_self.match > node.storage.synced_last():
                    self._fail(f"leader {node.id} counts index {pr_self.match} for itself before fsyncing it")
            if node.applied - r.log.snapshot.index >= self.compact_every:
                r.compact(node.applied, encode_state(node.state), keep_entries=5)
                node.storage.save_snapshot(r.log.snapshot, r.log.offset)

    def _check_durable(self, node: SimNode, m: Message) -> None:
        """A granted vote or an accepted append promises state that must survive a power loss."""
        st = node.storage
        if st.synced_hs.term > m.term:
            return  # it moved on to a later term in this same batch, durably: that supersedes the promise
        if m.type == MsgType.VOTE_RESP and not m.reject:
            if (st.synced_hs.term, st.synced_hs.vote) != (m.term, m.to):
                self._fail(
                    f"node {node.id} sends its vote for {m.to} in term {m.term} while its fsync'd "
                    f"term/vote is {st.synced_hs.term}/{st.synced_hs.vote}"
                )
        elif m.type == MsgType.APP_RESP and not m.reject and m.index > 0:
            r = node.raft
            assert r is not None
            want = r.log.term(m.index)
            if want is not None and st.synced_term(m.index) != want and m.index > st.synced_snap.index:
                self._fail(f"node {node.id} acknowledges index {m.index} to {m.to} before fsyncing it")
            if st.synced_hs.term < m.term:
                self._fail(f"node {node.id} answers in term {m.term} before fsyncing that term")

    def _apply_snapshot(self, node: SimNode, snap: Snapshot) -> None:
        state = decode_state(snap.data)
        expect = [(i, d) for i, d in sorted(self.applied_at.items()) if i <= snap.index and d]
        if [x for x in state] != expect:
            self._fail(f"state-machine safety: node {node.id} snapshot at {snap.index} differs")
        node.load_state(state)
        node.applied = snap.index

    def _apply(self, node: SimNode, e: Entry) -> None:
        if e.index != node.applied + 1:
            self._fail(f"node {node.id} applied {e.index} after {node.applied}")
        node.applied = e.index
        data = e.data if e.type == EntryType.NORMAL else b""
        prev = self.applied_at.setdefault(e.index, data)
        if prev != data:
            self._fail(f"state-machine safety: index {e.index} applied differently on node {node.id}")
        if data:
            node.state.append((e.index, data))
            node.apply_kv(data)
            op = self.writes.get(data)
            if op is not None and op.outcome == INFO:
                op.outcome, op.complete = OK, float(self.now)  # it took effect no later than now
            if self.proposals.get(data) == node.id:
                self.acked.add(data)

    def _serve_reads(self, node: SimNode) -> None:
        """Answer each read whose ReadState index is applied here, with the value at this point."""
        done = [c for c, pr in node.reads.items() if pr.index is not None and pr.index <= node.applied]
        for c in done:
            op = node.reads.pop(c).op
            op.value = node.kv.get(op.key)
            op.outcome, op.complete = OK, float(self.now)

    def _check_leader(self, node: SimNode) -> None:
        r = node.raft
        assert r is not None
        other = self.leaders.setdefault(r.term, node.id)
        if other == node.id:
            self.events.append(f"t={self.now} {node.id} leads term {r.term}")
        else:
            self._fail(f"election safety: nodes {other} and {node.id} both lead term {r.term}")
        for idx, data in self.applied_at.items():
            if idx <= r.log.offset:
                continue
            if idx > r.log.last_index():
                self._fail(f"leader completeness: leader {node.id} (term {r.term}) lacks committed index {idx}")
            ent = r.log.entries[idx - r.log.offset - 1]
            if (ent.data if ent.type == EntryType.NORMAL else b"") != data:
                self._fail(f"leader completeness: leader {node.id} has a different entry at {idx}")

    def _check_logs(self) -> None:
        """Full log matching: equal (index, term) implies identical prefixes."""
        live = [n.raft for n in self.nodes.values() if n.raft is not None]
        for i, a in enumerate(live):
            for b in live[i + 1 :]:
                hi = min(a.log.last_index(), b.log.last_index())
                lo = max(a.log.offset, b.log.offset) + 1
                top = 0
                for idx in range(hi, lo - 1, -1):
                    if a.log.term(idx) == b.log.term(idx):
                        top = idx
                        break
                for idx in range(lo, top + 1):
                    ea = a.log.entries[idx - a.log.offset - 1]
                    eb = b.log.entries[idx - b.log.offset - 1]
                    if (ea.term, ea.data) != (eb.term, eb.data):
                        self._fail(f"log matching: nodes {a.id},{b.id} differ at {idx} below matching {top}")

    def _fail(self, what: str, around: float | None = None) -> None:
        """Stop with the seed to replay and the events before now (or before time `around`)."""
        events = self.events
        if around is not None:
            events = [e for e in events if float(e[2:].split(" ", 1)[0]) <= around + 20]
        tail = "\n  ".join(events[-15:])
        raise SafetyViolation(
            f"{what}\n  seed={self.seed} t={self.now}\n  events before t={around or self.now:.0f}:\n  {tail}\n"
            f"  replay: python -m tests.raftsim --seed {self.seed}"
        )

    # -- driving -------------------------------------------------------------
    def step(self) -> None:
        self.now += 1
        if self.restart_at:
            for nid, at in list(self.restart_at.items()):
                if at <= self.now:
                    self.restart(nid)
        self._deliver_due()
        if self.now % STEPS_PER_TICK == 0:
            for node in self.nodes.values():
                if node.raft is not None:
                    node.raft.tick()
            if self.read_rate and self.crng.random() < self.read_rate:
                self.read(at=self.now - 0.5)
        for node in self.nodes.values():
            if node.raft is not None:
                self._process(node)
        if self.check_every and self.now % self.check_every == 0:
            self._check_logs()

    def run_ticks(self, ticks: int) -> None:
        for _ in range(ticks * STEPS_PER_TICK):
            self.step()

    def propose(self, nid: int | None = None) -> bytes | None:
        """A client write of a fresh value to one of KEYS keys, through node nid (random if None)."""
        live = [n for n in self.nodes.values() if n.raft is not None]
        if not live:
            return None
        node = self.nodes[nid] if nid is not None else self.rng.choice(live)
        if node.raft is None:
            return None
        self.next_prop += 1
        key, value = f"k{self.next_prop % KEYS}", f"p{self.next_prop}"
        data = f"{key}={value}".encode()
        op = Op(len(self.history), node.id, "put", key, value=value, invoke=self.now + 0.5, node=f"n{node.id}")
        self.history.append(op)
        try:
            node.raft.propose(data)
        except ProposalDropped:
            op.outcome, op.complete = FAIL, self.now + 0.5
            return None
        self.writes[data] = op
        self.proposals[data] = node.id
        return data

    def read(self, nid: int | None = None, at: float | None = None) -> None:
        """A client's linearizable read (ReadIndex) of one key through node nid (random if None)."""
        live = [n for n in self.nodes.values() if n.raft is not None]
        if not live:
            return
        node = self.nodes[nid] if nid is not None else self.crng.choice(live)
        if node.raft is None:
            return
        op = Op(len(self.history), node.id, "get", f"k{self.crng.randrange(KEYS)}", node=f"n{node.id}")
        op.invoke = self.now + 0.5 if at is None else at
        ctx = b"r%d" % op.id
        try:
            node.raft.read_index(ctx)
        except ProposalDropped:
            return  # refused at once: no effect, nothing to record
        self.history.append(op)
        floor = max([self.commit_hw] + [n.raft.log.committed for n in live if n.raft is not None])
        node.reads[ctx] = PendingRead(op, floor)

    def leader(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            r = n.raft
            if r is not None and r.role == Role.LEADER and (best is None or r.term > best.raft.term):  # type: ignore[union-attr]
                best = n
        return best

    def members(self) -> set[int]:
        ld = self.leader()
        if ld is None or ld.raft is None:
            return set()
        return set(ld.raft.voters | ld.raft.learners)

    # -- the final check -------------------------------------------------------
    def converge(self, max_ticks: int = 400) -> None:
        self.heal()
        self.drop = self.dup = 0.0
        self.crash_rate = 0.0
        for nid in list(self.nodes):
            self.restart(nid)
        marker: bytes | None = None
        waited = 0
        for _ in range(max_ticks):
            self.run_ticks(1)
            ld = self.leader()
            if ld is None or ld.raft is None:
                continue
            waited += 1
            # an accepted but unacknowledged proposal may be lost (leader change): retry like a client
            if marker is None or marker not in self.proposals or (marker not in self.acked and waited > 20):
                marker = self.propose(ld.id)
                waited = 0
                continue
            if marker not in self.acked:
                continue
            # a freshly elected leader may not know the commit index yet: it is only
            # authoritative once something of its own term is committed and applied
            lr = ld.raft
            if lr.log.term(lr.log.committed) != lr.term or lr.log.applied < lr.log.committed:
                continue
            if marker not in {d for _, d in ld.state}:
                continue
            members = self.members()
            target = lr.log.committed
            if all(self.nodes[m].applied >= target for m in members if m in self.nodes):
                break
        else:
            self._fail(f"no convergence after healing (leader={self.leader() and self.leader().id})")  # type: ignore[union-attr]
        self._check_logs()
        for m in self.members():
            have = {d for _, d in self.nodes[m].state}
            lost = self.acked - have
            if lost:
                self._fail(f"acknowledged proposals lost on node {m}: {sorted(lost)[:5]}")
        self.check_history()

    def check_history(self, budget_s: float = 20.0) -> None:
        """Linearizability of the clients' writes and reads (chaos.checker, as for real clusters).

        After convergence every committed write is applied everywhere, so a write still
        without an outcome never took effect: recording it as failed is exact, and keeps
        the search small."""
        for op in self.history:
            if op.kind == "put" and op.outcome == INFO:
                op.outcome = FAIL
        res = check(self.history, budget_s=budget_s)
        if res.verdict == INVALID:
            bad = res.failures()[0]
            self._fail("linearizability: " + bad.explain(), around=bad.culprit.invoke if bad.culprit else None)


def random_schedule(seed: int, n: int | None = None, length: int = 120, *, check_promises: bool = True) -> Sim:
    """One randomized schedule of faults, client writes and reads, crashes and membership changes."""
    rng = random.Random(seed ^ 0x5EED)
    n = n or rng.choice([1, 2, 3, 3, 5, 5, 6, 7])
    sim = Sim(
        seed,
        n,
        drop=rng.choice([0.0, 0.0, 0.05, 0.15]),
        dup=rng.choice([0.0, 0.05]),
        max_delay=rng.choice([2, 4, 8]),
        compact_every=rng.choice([10, 30, 1000]),
        crash_rate=rng.choice([0.0, 0.001, 0.004]),
        read_rate=rng.choice([0.2, 0.5]),
        check_promises=check_promises,
    )
    for _ in range(length):
        x = rng.random()
        ids = sorted(sim.nodes)
        if x < 0.35:
            sim.propose()
        elif x < 0.42:
            k = rng.randint(1, max(1, len(ids) - 1))
            a = set(rng.sample(ids, k))
            sim.partition(a, set(ids) - a)
        elif x < 0.47 and len(ids) >= 3:
            # bridge: two halves that both reach one middle node
            mid = rng.choice(ids)
            rest = [i for i in ids if i != mid]
            rng.shuffle(rest)
            half = len(rest) // 2
            sim.partition(set(rest[:half]) | {mid}, set(rest[half:]) | {mid})
            sim.blocked = {(a, b) for (a, b) in sim.blocked if mid not in (a, b)}
        elif x < 0.50:
            if len(ids) >= 2:
                src, dst = rng.sample(ids, 2)
                sim.blocked.add((src, dst))  # one-way drop
                sim.events.append(f"t={sim.now} drop {src}->{dst}")
        elif x < 0.58:
            sim.heal()
        elif x < 0.65:
            sim.crash(rng.choice(ids))
        elif x < 0.75:
            sim.restart(rng.choice(ids))
        elif x < 0.78:
            ld = sim.leader()
            if ld is not None and ld.raft is not None:
                target = rng.choice(sorted(ld.raft.voters))
                ld.raft.transfer_leader(target)
                sim.events.append(f"t={sim.now} transfer {ld.id}->{target}")
        elif x < 0.82:
            _random_conf_change(sim, rng)
        elif x < 0.85:
            for nid in ids:  # a burst of reads, one through every node
                sim.read(nid)
        sim.run_ticks(rng.randint(1, 6))
    sim.converge()
    return sim


def _random_conf_change(sim: Sim, rng: random.Random) -> None:
    ld = sim.leader()
    if ld is None or ld.raft is None:
        return
    voters, learners = sorted(ld.raft.voters), sorted(ld.raft.learners)
    choice = rng.random()
    try:
        if choice < 0.35 and len(sim.nodes) < 9:
            new = sim.add_node()
            kind = ConfChangeType.ADD_LEARNER if rng.random() < 0.5 else ConfChangeType.ADD_NODE
            ld.raft.propose_conf_change(ConfChange(kind, new.id))
            sim.events.append(f"t={sim.now} {kind.name} {new.id}")
        elif choice < 0.6 and learners:
            nid = rng.choice(learners)
            ld.raft.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, nid))
            sim.events.append(f"t={sim.now} promote {nid}")
        elif len(voters) > 2:
            nid = rng.choice(voters + learners)
            ld.raft.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, nid))
            sim.events.append(f"t={sim.now} remove {nid}")
    except ProposalDropped:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="replay one schedule and print its events")
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument(
        "--end-to-end-only",
        action="store_true",
        help="skip the checks of each promise as it is made (durable votes and append replies, read "
        "indexes): find out whether a bug also shows as lost data, two leaders or a stale read",
    )
    ap.add_argument(
        "--save-history",
        metavar="FILE",
        help="with --seed: write the clients' history (JSON lines, for `orchestrate check`)",
    )
    args = ap.parse_args(argv)
    if args.nodes is not None and not 1 <= args.nodes <= 9:
        ap.error("--nodes must be 1..9")
    promises = not args.end_to_end_only
    if args.seed is not None:
        try:
            sim = random_schedule(args.seed, args.nodes, check_promises=promises)
        except SafetyViolation as e:
            print(f"seed {args.seed}: FAILED: {e}", file=sys.stderr)
            return 1
        print("\n".join(sim.events))
        if args.save_history:
            save(sim.history, Path(args.save_history))
        print(
            f"seed {args.seed}: ok ({len(sim.acked)} acknowledged proposals, {len(sim.history)} client operations, "
            f"t={sim.now})"
        )
        return 0
    t0 = time.monotonic()
    for s in range(args.start, args.start + args.schedules):
        try:
            random_schedule(s, args.nodes, check_promises=promises)
        except SafetyViolation as e:
            print(f"seed {s}: FAILED: {e}", file=sys.stderr)
            return 1
        if (s - args.start + 1) % 500 == 0:
            el = time.monotonic() - t0
            print(f"{s - args.start + 1} schedules, {(s - args.start + 1) / el:.1f}/s", flush=True)
    el = time.monotonic() - t0
    print(f"{args.schedules} schedules ok in {el:.1f}s ({args.schedules / max(el, 1e-9):.1f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
