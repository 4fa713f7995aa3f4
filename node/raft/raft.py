"""The Raft consensus state machine: pure, deterministic, no I/O.

Modelled on etcd's raft library. The driver feeds it ticks and messages and
collects a Ready batch (state to persist, messages to send, entries to apply),
then calls advance(). Randomness comes only from the injected RNG, so a seeded
simulation replays exactly.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable
from dataclasses import dataclass

from .log import RaftLog
from .progress import Progress, ProgressState
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    DropReason,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SoftState,
)

CAMPAIGN_TRANSFER = b"transfer"


@dataclass(slots=True)
class Config:
    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_bytes: int = 1 << 20
    max_msg_entries: int = 256
    max_inflight: int = 256
    max_apply_bytes: int = 8 << 20


@dataclass(slots=True)
class _PendingRead:
    index: int
    frm: int
    context: bytes
    acks: set[int]


@dataclass(slots=True, frozen=True)
class PeerStatus:
    match: int
    next: int
    state: str
    recent_active: bool
    last_contact_tick: int
    learner: bool


@dataclass(slots=True, frozen=True)
class Status:
    id: int
    role: Role
    term: int
    vote: int
    lead: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    peers: dict[int, PeerStatus]
    lead_transferee: int
    tick: int


def quorum(n: int) -> int:
    """Majority of n voters: the seed's N/2+1 with integer division."""
    return n // 2 + 1


class Raft:
    def __init__(
        self,
        config: Config,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        if config.id == NONE:
            raise ValueError("node id must be non-zero")
        if config.heartbeat_tick <= 0 or config.election_tick <= config.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick > 0")
        self.cfg = config
        self.id = config.id
        self.rng = rng
        self.log = RaftLog(snapshot, entries)
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        # proposals made in one turn leave together (see _flush_proposals): one MsgApp per follower
        # and one MsgProp to the leader per Ready instead of one per request
        self._bcast_due = False
        self._fwd_props: list[Entry] = []
        self.read_states: list[ReadState] = []
        self.pending_reads: list[_PendingRead] = []
        self.stashed_reads: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.pending_conf_index = 0
        self.lead_transferee = NONE
        self.ticks = 0
        self._apply_conf_state(self.log.snapshot.conf)
        if hs.commit:
            self.log.commit_to(min(hs.commit, self.log.last_index()))
        self._prev_hs = HardState(self.term, self.vote, self.log.committed)
        self._prev_ss = SoftState(self.lead, self.role)
        self._become_follower(self.term, NONE)

    # ------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------
    def bootstrap(self, peers: Iterable[int], contexts: dict[int, bytes] | None = None) -> None:
        """Start a brand-new cluster: every initial member writes the same
        AddNode entries at term 1 so a later joiner can learn the membership
        from the log alone (as etcd does)."""
        if self.log.last_index() != 0 or self.term != 0:
            raise ValueError("bootstrap on a node that already has state")
        ctx = contexts or {}
        ents = [
            Entry(i + 1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, p, ctx.get(p, b"")).encode())
            for i, p in enumerate(sorted(set(peers)))
        ]
        self.log.append(ents)
        self.log.commit_to(len(ents))
        self._become_follower(1, NONE)

    def tick(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> None:
        self._propose(Entry(0, 0, EntryType.NORMAL, data))

    def propose_conf_change(self, cc: ConfChange) -> None:
        self._propose(Entry(0, 0, EntryType.CONF_CHANGE, cc.encode()))

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with this context appears in a later Ready."""
        if self.role != Role.LEADER and self.lead == NONE:
            raise ProposalDropped(DropReason.NO_LEADER)
        m = Message(MsgType.READ_INDEX, frm=self.id, entries=[Entry(0, 0, EntryType.NORMAL, context)])
        if self.role == Role.LEADER:
            self._leader_read_index(m)
        else:
            m.to = self.lead
            self.msgs.append(m)

    def transfer_leader(self, to: int) -> None:
        m = Message(MsgType.TRANSFER_LEADER, frm=self.id, index=to)
        if self.role == Role.LEADER:
            self._leader_transfer(to)
        elif self.lead != NONE:
            m.to = self.lead
            self.msgs.append(m)

    def campaign(self) -> None:
        self.step(Message(MsgType.HUP, frm=self.id))

    def forget_leader(self) -> None:
        """A follower drops its leader (e.g. its connection died) so it grants
        pre-votes at once instead of waiting out the election timeout."""
        if self.role == Role.FOLLOWER and self.lead not in (NONE, self.id):
            self.lead = NONE

    def report_unreachable(self, node: int) -> None:
        self.step(Message(MsgType.UNREACHABLE, frm=node))

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.step(Message(MsgType.SNAP_STATUS, frm=node, reject=not ok))

    def compact(self, index: int, data: bytes, keep_entries: int = 0, conf: ConfState | None = None) -> None:
        """The application made a snapshot of its state at applied index `index`.

        Without `conf` it must be the current applied index: the membership
        recorded in the snapshot is the one in force after applying exactly that
        entry. A snapshot built in the background for an earlier applied index
        passes the ConfState it recorded at that index."""
        if conf is None and index != self.log.applied:
            raise ValueError(f"snapshot index {index} != applied index {self.log.applied}")
        if index > self.log.applied:
            raise ValueError(f"snapshot index {index} is beyond the applied index {self.log.applied}")
        t = self.log.term(index)
        if t is None:
            return
        snap = Snapshot(index, t, conf if conf is not None else self.conf_state(), data)
        self.log.compact(snap, keep_entries)

    # -- read-only queries: what a driver or a service may look at without touching the state --
    def conf_state(self) -> ConfState:
        return ConfState(frozenset(self.voters), frozenset(self.learners))

    def promotable(self) -> bool:
        return self.id in self.voters

    def is_voter(self, node: int) -> bool:
        return node in self.voters

    def is_learner(self, node: int) -> bool:
        return node in self.learners

    def member_ids(self) -> frozenset[int]:
        """Voters and learners of the configuration in force."""
        return frozenset(self.voters | self.learners)

    def match_index(self, node: int) -> int | None:
        """The highest index known replicated on `node` (meaningful on a leader); None if untracked."""
        pr = self.prs.get(node)
        return None if pr is None else pr.match

    @property
    def committed_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def snapshot_meta(self) -> Snapshot:
        """The latest snapshot the log starts from (its data is the application's)."""
        return self.log.snapshot

    def first_index(self) -> int:
        """The first entry still held in memory (the ones before it were compacted)."""
        return self.log.first_index()

    def tail_terms(self, n: int) -> tuple[int, list[int]]:
        """(index of the first, terms) of the last `n` entries held, oldest first: for log views.

        O(n): only the tail is copied, however long the log."""
        ents = self.log.entries[-n:] if n > 0 else []
        return self.log.last_index() - len(ents) + 1, [e.term for e in ents]

    def election_timer(self) -> tuple[int, int]:
        """(ticks elapsed, ticks due) of the running timer: a follower's or candidate's randomized
        election timeout; a leader's check-quorum period (it steps down when that passes unheard)."""
        if self.role == Role.LEADER:
            return self.election_elapsed, self.cfg.election_tick
        return self.election_elapsed, self.randomized_timeout

    def has_ready(self) -> bool:
        return bool(
            self.msgs
            or self._bcast_due
            or self._fwd_props
            or self.read_states
            or self.log.unstable_entries()
            or self.log.pending_snapshot is not None
            or self.log.next_committed(1)
            or self._hard_state() != self._prev_hs
            or SoftState(self.lead, self.role) != self._prev_ss
        )

    def ready(self) -> Ready:
        self._flush_proposals()
        rd = Ready()
        ss = SoftState(self.lead, self.role)
        if ss != self._prev_ss:
            rd.soft_state = ss
        hs = self._hard_state()
        if hs != self._prev_hs:
            rd.hard_state = hs
        rd.entries = list(self.log.unstable_entries())
        rd.snapshot = self.log.pending_snapshot
        rd.committed_entries = self.log.next_committed(self.cfg.max_apply_bytes)
        rd.messages, self.msgs = self.msgs, []
        rd.read_states, self.read_states = self.read_states, []
        rd.must_sync = bool(
            rd.entries
            or rd.snapshot is not None
            or (rd.hard_state is not None and (hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote))
        )
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted rd.entries/hard_state/snapshot and applied rd.committed_entries."""
        if rd.soft_state is not None:
            self._prev_ss = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            self.log.snapshot_applied(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(ConfChange.decode(e.data))
            self.log.applied = max(self.log.applied, e.index)
        if self.role == Role.LEADER:
            pr = self.prs.get(self.id)
            if pr is not None and pr.maybe_update(self.log.stable) and self._maybe_commit():
                self._bcast_append()

    def status(self) -> Status:
        peers = {
            pid: PeerStatus(
                pr.match, pr.next, pr.state.name.lower(), pr.recent_active, pr.last_contact_tick, pid in self.learners
            )
            for pid, pr in self.prs.items()
        }
        return Status(
            self.id,
            self.role,
            self.term,
            self.vote,
            self.lead,
            self.log.committed,
            self.log.applied,
            self.log.last_index(),
            self.log.snapshot.index,
            tuple(sorted(self.voters)),
            tuple(sorted(self.learners)),
            peers if self.role == Role.LEADER else {},
            self.lead_transferee,
            self.ticks,
        )

    # ------------------------------------------------------------------
    # step: the single entry point for messages
    # ------------------------------------------------------------------
    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum and self.lead != NONE and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    return  # we heard from a live leader recently: ignore the disruption
            if m.type == MsgType.PRE_VOTE:
                pass  # never change term for a pre-vote
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # we will bump our own term when we win the pre-vote
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MsgType.HEARTBEAT, MsgType.APP):
                # tell a stale leader about the new term so it steps down
                self._send(Message(MsgType.APP_RESP, to=m.frm))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type == MsgType.HUP:
            self._hup(transfer=False)
        elif m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    # ------------------------------------------------------------------
    # roles
    # ------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        self.lead_transferee = NONE
        self.votes = {}
        last = self.log.last_index()
        for pid in list(self.prs):
            fresh = Progress(last + 1, self.cfg.max_inflight)
            if pid == self.id:
                fresh.match = self.log.stable
            self.prs[pid] = fresh
        self.pending_conf_index = 0
        self.pending_reads = []
        self.stashed_reads = []

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self.election_elapsed = 0
        self.randomized_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        for pid, pr in self.prs.items():
            if pid == self.id:
                pr.become_replicate()
                pr.match = self.log.stable
                pr.next = self.log.last_index() + 1
        # conservatively assume an unapplied conf change may be in the log
        self.pending_conf_index = self.log.last_index()
        self._append_entries([Entry(0, 0, EntryType.NORMAL, b"")])

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER:
            return
        if not self.promotable():
            return
        if self._has_unapplied_conf_change():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        lo, hi = self.log.applied + 1, self.log.committed + 1
        ents = self.log.slice(lo, hi) if lo < hi else []
        return any(e.type == EntryType.CONF_CHANGE for e in ents or [])

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MsgType.VOTE, self.term
        if self._poll(self.id, True) == "won":
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        for pid in sorted(self.voters):
            if pid == self.id:
                continue
            self._send(
                Message(
                    vote_type,
                    to=pid,
                    term=term,
                    log_term=self.log.last_term(),
                    index=self.log.last_index(),
                    context=CAMPAIGN_TRANSFER if transfer else b"",
                )
            )

    def _poll(self, frm: int, granted: bool) -> str:
        self.votes.setdefault(frm, granted)
        yes = sum(1 for v, g in self.votes.items() if g and v in self.voters)
        no = sum(1 for v, g in self.votes.items() if not g and v in self.voters)
        q = quorum(len(self.voters))
        if yes >= q:
            return "won"
        if no > len(self.voters) - q:
            return "lost"
        return "pending"

    def _handle_vote_request(self, m: Message) -> None:
        resp = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MsgType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # a pre-vote reply carries the candidate's future term so it is not dropped as stale
            self._send(Message(resp, to=m.frm, term=m.term))
            if m.type == MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, to=m.frm, term=self.term, reject=True))

    # ------------------------------------------------------------------
    # ticks
    # ------------------------------------------------------------------
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self.step(Message(MsgType.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MsgType.CHECK_QUORUM, frm=self.id))
            if self.role == Role.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer took too long: give up
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(MsgType.BEAT, frm=self.id))

    # ------------------------------------------------------------------
    # leader
    # ------------------------------------------------------------------
    def _propose(self, e: Entry) -> None:
        if self.role == Role.LEADER:
            self._leader_propose([e])
        elif self.lead == NONE:
            raise ProposalDropped(DropReason.NO_LEADER)
        else:
            self._fwd_props.append(e)

    def _flush_proposals(self) -> None:
        """Send what this turn's proposals need: the leader's appends, a follower's one MsgProp.

        A follower whose leader went away meanwhile drops them, as a lost MsgProp would be:
        the proposers time out (Raft never promised them anything).
        """
        if self._bcast_due:
            self._bcast_due = False
            if self.role == Role.LEADER:
                for pid in self.prs:
                    if pid != self.id:
                        self._send_append(pid, send_if_empty=False)
        if self._fwd_props:
            ents, self._fwd_props = self._fwd_props, []
            if self.role == Role.LEADER:
                with contextlib.suppress(ProposalDropped):
                    self._leader_propose(ents)
                    self._flush_proposals()
            elif self.lead != NONE:
                self._send(Message(MsgType.PROP, to=self.lead, entries=ents))

    def _forward(self, m: Message) -> None:
        """Pass a client request on to the leader, keeping its original sender."""
        fwd = Message(m.type, to=self.lead, frm=m.frm, index=m.index, entries=m.entries, context=m.context)
        self.msgs.append(fwd)

    def _leader_propose(self, ents: list[Entry]) -> None:
        if self.id not in self.prs:
            raise ProposalDropped(DropReason.LEADER_REMOVED)
        if self.lead_transferee != NONE:
            raise ProposalDropped(DropReason.LEADERSHIP_TRANSFER)
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    raise ProposalDropped(DropReason.CONF_CHANGE_PENDING)
                self.pending_conf_index = self.log.last_index() + 1 + ents.index(e)
        self._append_entries(ents)
        self._bcast_due = True

    def _append_entries(self, ents: list[Entry]) -> None:
        li = self.log.last_index()
        for i, e in enumerate(ents):
            e.index = li + 1 + i
            e.term = self.term
        # the leader counts itself only once its own copy is durable (see advance)
        self.log.append(ents)

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _maybe_commit(self) -> bool:
        if not self.voters:
            return False
        matches = sorted((self.prs[v].match for v in self.voters if v in self.prs), reverse=True)
        q = quorum(len(self.voters))
        if len(matches) < q:
            return False
        idx = matches[q - 1]
        if self.log.maybe_commit(idx, self.term):
            self._release_stashed_on_commit()
            return True
        return False

    def _release_stashed_on_commit(self) -> None:
        if self.stashed_reads and self._committed_in_term():
            stashed, self.stashed_reads = self.stashed_reads, []
            for m in stashed:
                self._step_leader(m)

    def _bcast_append(self) -> None:
        for pid in self.prs:
            if pid != self.id:
                self._send_append(pid)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        for pid, pr in self.prs.items():
            if pid == self.id:
                continue
            self._send(Message(MsgType.HEARTBEAT, to=pid, commit=min(pr.match, self.log.committed), context=ctx))

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        ents = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_msg_bytes, self.cfg.max_msg_entries)
        if prev_term is None or ents is None:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MsgType.APP,
                to=to,
                index=prev_index,
                log_term=prev_term,
                entries=list(ents),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(ents[-1].index if ents else prev_index, len(ents))
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snap = self.log.snapshot
        self._send(Message(MsgType.SNAP, to=to, snapshot=snap))
        pr.become_snapshot(snap.index)
        return True

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.BEAT:
            self._bcast_heartbeat(self.pending_reads[-1].context if self.pending_reads else b"")
            return
        if t == MsgType.CHECK_QUORUM:
            if not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            for pid, pr in self.prs.items():
                if pid != self.id:
                    pr.recent_active = False
                    if pr.state == ProgressState.SNAPSHOT:
                        if pr.snapshot_stale:
                            pr.become_probe()  # the snapshot got lost: try again
                        else:
                            pr.snapshot_stale = True
            return
        if t == MsgType.PROP:
            try:
                self._leader_propose(m.entries)
            except ProposalDropped:
                pass  # a forwarded proposal: the proposer times out and retries
            return
        if t == MsgType.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MsgType.TRANSFER_LEADER:
            self._leader_transfer(m.index)
            return

        peer = self.prs.get(m.frm)
        if peer is None:
            return
        pr = peer
        if t == MsgType.APP_RESP:
            pr.recent_active = True
            pr.last_contact_tick = self.ticks
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            old_paused = pr.is_paused()
            if not pr.maybe_update(m.index):
                return
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self._maybe_commit():
                self._bcast_append()
            elif old_paused:
                self._send_append(m.frm)
            while self._send_append(m.frm, send_if_empty=False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self._send(Message(MsgType.TIMEOUT_NOW, to=m.frm))
        elif t == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.last_contact_tick = self.ticks
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._ack_read(m.frm, m.context)
        elif t == MsgType.SNAP_STATUS:
            if pr.state == ProgressState.SNAPSHOT:
                if m.reject:
                    pr.pending_snapshot = 0
                pr.become_probe()
                pr.probe_sent = True  # wait for the follower's reply before probing again
        elif t == MsgType.UNREACHABLE and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def _quorum_active(self) -> bool:
        active = sum(1 for v in self.voters if v == self.id or (v in self.prs and self.prs[v].recent_active))
        return active >= quorum(len(self.voters))

    def _leader_transfer(self, to: int) -> None:
        if to not in self.voters or to == self.id:
            return
        if self.lead_transferee == to:
            return
        self.election_elapsed = 0
        self.lead_transferee = to
        if self.prs[to].match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=to))
        else:
            self._send_append(to)

    def _leader_read_index(self, m: Message) -> None:
        ctx = m.entries[0].data if m.entries else b""
        if not self._committed_in_term():
            self.stashed_reads.append(m)  # wait for our first commit in this term
            return
        if len(self.voters) == 1 and self.id in self.voters:
            self._answer_read(m.frm, self.log.committed, ctx)
            return
        self.pending_reads.append(_PendingRead(self.log.committed, m.frm, ctx, {self.id}))
        self._bcast_heartbeat(ctx)

    def _ack_read(self, frm: int, ctx: bytes) -> None:
        pos = next((i for i, r in enumerate(self.pending_reads) if r.context == ctx), -1)
        if pos < 0:
            return
        req = self.pending_reads[pos]
        req.acks.add(frm)
        if sum(1 for a in req.acks if a in self.voters) < quorum(len(self.voters)):
            return
        # confirming leadership for this read also confirms every read queued before it
        done, self.pending_reads = self.pending_reads[: pos + 1], self.pending_reads[pos + 1 :]
        for r in done:
            self._answer_read(r.frm, r.index, r.context)

    def _answer_read(self, frm: int, index: int, ctx: bytes) -> None:
        if frm in (NONE, self.id):
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(
                Message(MsgType.READ_INDEX_RESP, to=frm, index=index, entries=[Entry(0, 0, EntryType.NORMAL, ctx)])
            )

    # ------------------------------------------------------------------
    # candidate / follower
    # ------------------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        my_resp = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        t = m.type
        if t == MsgType.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MsgType.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            res = self._poll(m.frm, not m.reject)
            if res == "won":
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif res == "lost":
                self._become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            if self.lead not in (NONE, m.frm):
                self._forward(m)  # a remote request reached us: pass it on, never raise
        elif t == MsgType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MsgType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MsgType.READ_INDEX_RESP:
            ctx = m.entries[0].data if m.entries else b""
            self.read_states.append(ReadState(m.index, ctx))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=last_new))
            return
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(
            Message(
                MsgType.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=self.log.term(hint) or 0,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        if self._restore(snap):
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        if snap.index <= self.log.committed:
            return False
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term + 1, NONE)
            return False
        if self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # we already have it: just fast-forward
            return False
        self.log.restore(snap)
        self._apply_conf_state(snap.conf)
        return True

    # ------------------------------------------------------------------
    # membership
    # ------------------------------------------------------------------
    def _apply_conf_state(self, cs: ConfState) -> None:
        self.voters = set(cs.voters)
        self.learners = set(cs.learners)
        last = self.log.last_index()
        self.prs = {
            pid: self.prs.get(pid) or Progress(last + 1, self.cfg.max_inflight) for pid in self.voters | self.learners
        }

    def _apply_conf_change(self, cc: ConfChange) -> None:
        nid = cc.node_id
        if cc.type == ConfChangeType.ADD_NODE:
            self.learners.discard(nid)
            self.voters.add(nid)
        elif cc.type == ConfChangeType.ADD_LEARNER:
            if nid in self.voters:
                return  # demotion is not supported by single-step changes
            self.learners.add(nid)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.voters.discard(nid)
            self.learners.discard(nid)
        if nid in self.voters or nid in self.learners:
            if nid not in self.prs:
                pr = Progress(self.log.last_index() + 1, self.cfg.max_inflight)
                if nid == self.id:
                    pr.match = self.log.stable
                self.prs[nid] = pr
        else:
            self.prs.pop(nid, None)
        if self.role != Role.LEADER:
            return
        if nid == self.id and cc.type == ConfChangeType.REMOVE_NODE:
            self._become_follower(self.term, NONE)  # a removed leader steps down
            return
        if self.lead_transferee != NONE and self.lead_transferee not in self.voters:
            self.lead_transferee = NONE
        self._maybe_commit()  # the quorum may have shrunk
        self._bcast_append()

    # ------------------------------------------------------------------
    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _send(self, m: Message) -> None:
        m.frm = self.id
        if m.term == 0 and m.type not in (MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            m.term = self.term
        self.msgs.append(m)
