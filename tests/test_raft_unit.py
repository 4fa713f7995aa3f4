"""Unit tests of the Raft core, by the rules of the paper (§5.1-5.4, §6, §7) and etcd's extensions."""

from __future__ import annotations

import random

import pytest

from node.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    Raft,
    Role,
    Snapshot,
)


class Net:
    """Synchronous in-memory network: messages are delivered until none are left."""

    def __init__(self, n: int, *, pre_vote: bool = True, check_quorum: bool = True, election: int = 10) -> None:
        self.nodes: dict[int, Raft] = {}
        self.cut: set[tuple[int, int]] = set()
        self.applied: dict[int, list[bytes]] = {}
        self.reads: dict[int, list[tuple[int, bytes]]] = {}
        for i in range(1, n + 1):
            cfg = Config(i, election_tick=election, heartbeat_tick=1, pre_vote=pre_vote, check_quorum=check_quorum)
            r = Raft(cfg, random.Random(i))
            r.bootstrap(range(1, n + 1))
            self.nodes[i] = r
            self.applied[i] = []
            self.reads[i] = []
        self.flush()

    def isolate(self, nid: int) -> None:
        for o in self.nodes:
            if o != nid:
                self.cut |= {(nid, o), (o, nid)}

    def heal(self) -> None:
        self.cut = set()

    def flush(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            pending: list[Message] = []
            for nid, r in self.nodes.items():
                while r.has_ready():
                    rd = r.ready()
                    pending += rd.messages
                    self.applied[nid] += [e.data for e in rd.committed_entries if e.type == EntryType.NORMAL and e.data]
                    self.reads[nid] += [(s.index, s.context) for s in rd.read_states]
                    r.advance(rd)
            if not pending:
                return
            for m in pending:
                if (m.frm, m.to) not in self.cut and m.to in self.nodes:
                    self.nodes[m.to].step(m)

    def tick(self, n: int = 1, only: int | None = None) -> None:
        for _ in range(n):
            for nid, r in self.nodes.items():
                if only is None or nid == only:
                    r.tick()
            self.flush()

    def elect(self, nid: int) -> None:
        self.nodes[nid].campaign()
        self.flush()
        assert self.nodes[nid].role == Role.LEADER

    def leader(self) -> Raft | None:
        ls = [r for r in self.nodes.values() if r.role == Role.LEADER]
        return max(ls, key=lambda r: r.term) if ls else None


# -- §5.1 terms ------------------------------------------------------------------
def test_higher_term_turns_leader_into_follower() -> None:
    net = Net(3)
    net.elect(1)
    r = net.nodes[1]
    r.step(Message(MsgType.APP, frm=2, to=1, term=r.term + 5, index=0, log_term=0))
    assert r.role == Role.FOLLOWER and r.term >= 7 and r.lead == 2


def test_stale_term_message_is_rejected_with_current_term() -> None:
    net = Net(3)
    net.elect(1)
    f = net.nodes[2]
    f.step(Message(MsgType.APP, frm=3, to=2, term=f.term - 1))
    rd = f.ready()
    assert any(m.type == MsgType.APP_RESP and m.term == f.term and m.to == 3 for m in rd.messages)
    f.advance(rd)


# -- §5.2 leader election --------------------------------------------------------
def test_single_node_elects_itself_after_timeout() -> None:
    net = Net(1)
    net.tick(25)
    assert net.nodes[1].role == Role.LEADER


def test_randomized_election_timeout_in_range() -> None:
    seen = set()
    for seed in range(200):
        r = Raft(Config(1, election_tick=10), random.Random(seed))
        seen.add(r.randomized_timeout)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_candidate_with_majority_wins_and_others_follow() -> None:
    net = Net(5)
    net.elect(3)
    assert all(r.lead == 3 for r in net.nodes.values())
    assert sum(r.role == Role.LEADER for r in net.nodes.values()) == 1


def test_candidate_without_majority_cannot_win() -> None:
    net = Net(5, pre_vote=False)
    net.isolate(1)
    net.cut -= {(1, 2), (2, 1)}  # 1 reaches only 2: two votes of five
    net.nodes[1].campaign()
    net.flush()
    assert net.nodes[1].role == Role.CANDIDATE


def test_one_vote_per_term() -> None:
    r = Raft(Config(1), random.Random(1))
    r.bootstrap([1, 2, 3])
    r.step(Message(MsgType.VOTE, frm=2, to=1, term=5, index=3, log_term=1))
    r.step(Message(MsgType.VOTE, frm=3, to=1, term=5, index=3, log_term=1))
    rd = r.ready()
    grants = [m.to for m in rd.messages if m.type == MsgType.VOTE_RESP and not m.reject]
    assert grants == [2]


# -- §5.3 log replication ------------------------------------------------------
def test_leader_commits_at_majority_and_followers_apply() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"x")
    net.flush()
    assert all(net.applied[i] == [b"x"] for i in net.nodes)


def test_follower_truncates_conflicting_uncommitted_entries() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.nodes[1].propose(b"lost")  # never reaches a majority
    net.flush()
    old_last = net.nodes[1].log.last_index()
    net.tick(30, only=2)  # 2 and 3 elect a new leader
    net.tick(30)
    new = net.leader()
    assert new is not None and new.id != 1
    new.propose(b"kept")
    net.flush()
    net.heal()
    net.tick(5)
    net.flush()
    assert b"lost" not in net.applied[1] and b"kept" in net.applied[1]
    assert net.nodes[1].log.last_index() >= old_last


def test_fast_backtracking_uses_few_round_trips() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    for i in range(200):
        net.nodes[1].propose(b"v%d" % i)
    net.flush()
    probes: list[Message] = []
    net.heal()
    leader = net.nodes[1]
    orig = leader.step

    def spy(m: Message) -> None:
        if m.type == MsgType.APP_RESP and m.reject:
            probes.append(m)
        orig(m)

    leader.step = spy  # type: ignore[method-assign]
    net.tick(2)
    net.flush()
    assert len(net.applied[3]) == 200
    assert len(probes) <= 2


def test_heartbeat_commit_never_exceeds_follower_match() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    net.nodes[1].propose(b"a")
    net.flush()
    net.nodes[1].step(Message(MsgType.BEAT, frm=1))
    rd = net.nodes[1].ready()
    hb3 = [m for m in rd.messages if m.type == MsgType.HEARTBEAT and m.to == 3]
    assert hb3 and hb3[0].commit <= net.nodes[1].prs[3].match
    net.nodes[1].advance(rd)


# -- §5.4 safety -----------------------------------------------------------------
def test_voter_rejects_candidate_with_stale_log() -> None:
    r = Raft(Config(1), random.Random(1))
    r.bootstrap([1, 2, 3])
    rd = r.ready()
    r.advance(rd)
    r.step(Message(MsgType.VOTE, frm=2, to=1, term=3, index=1, log_term=1))  # 2 has less
    msgs = r.ready().messages
    assert [m.reject for m in msgs if m.type == MsgType.VOTE_RESP] == [True]


def test_leader_does_not_commit_previous_term_entries_by_counting() -> None:
    """Figure 8: an entry from an older term is committed only with one of the current term."""
    r = Raft(Config(1, check_quorum=False, pre_vote=False), random.Random(1))
    ents = [Entry(1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, i).encode()) for i in (1,)]
    ents += [Entry(2, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, 2).encode())]
    ents += [Entry(3, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, 3).encode())]
    ents += [Entry(4, 2, EntryType.NORMAL, b"old")]
    r = Raft(Config(1, check_quorum=False, pre_vote=False), random.Random(1), HardState(3, NONE, 3), None, ents)
    rd = r.ready()
    r.advance(rd)  # applies the membership
    r.campaign()
    r.step(Message(MsgType.VOTE_RESP, frm=2, to=1, term=4))
    assert r.role == Role.LEADER
    rd = r.ready()
    r.advance(rd)
    # follower 2 acknowledges the old entry 4 only: not committed (term 2 != 4)
    r.step(Message(MsgType.APP_RESP, frm=2, to=1, term=4, index=4))
    assert r.log.committed == 3
    # once the leader's own no-op (index 5, term 4) is on a majority, both commit
    r.step(Message(MsgType.APP_RESP, frm=2, to=1, term=4, index=5))
    assert r.log.committed == 5


def test_leader_counts_itself_only_after_persisting() -> None:
    net = Net(3)
    net.elect(1)
    ld = net.nodes[1]
    ld.propose(b"x")
    rd = ld.ready()  # not yet persisted / advanced
    idx = ld.log.last_index()
    ld.step(Message(MsgType.APP_RESP, frm=2, to=1, term=ld.term, index=idx))
    assert ld.log.committed < idx  # one follower alone is not a majority of 3
    ld.advance(rd)
    assert ld.log.committed == idx


# -- pre-vote and check-quorum -------------------------------------------------
def test_prevote_keeps_isolated_node_term() -> None:
    net = Net(3)
    net.elect(1)
    term = net.nodes[3].term
    net.isolate(3)
    net.tick(100)
    assert net.nodes[3].term == term and net.nodes[3].role == Role.PRE_CANDIDATE


def test_without_prevote_isolated_node_bumps_term() -> None:
    net = Net(3, pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    net.tick(100)
    assert net.nodes[3].term > net.nodes[1].term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.tick(25, only=1)
    assert net.nodes[1].role == Role.FOLLOWER


def test_follower_in_lease_ignores_vote_requests() -> None:
    net = Net(3)
    net.elect(1)
    f = net.nodes[2]
    f.step(Message(MsgType.PRE_VOTE, frm=3, to=2, term=f.term + 1, index=99, log_term=99))
    assert not [m for m in f.ready().messages if m.type == MsgType.PRE_VOTE_RESP]


def test_forget_leader_lets_followers_elect_at_once() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    for i in (2, 3):
        net.nodes[i].forget_leader()
    net.nodes[2].campaign()
    net.flush()
    assert net.nodes[2].role == Role.LEADER


# -- proposals ---------------------------------------------------------------------
def test_proposal_on_follower_is_forwarded() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[3].propose(b"via-follower")
    net.flush()
    assert all(b"via-follower" in net.applied[i] for i in net.nodes)


def test_proposal_without_leader_fails_fast() -> None:
    r = Raft(Config(1), random.Random(1))
    r.bootstrap([1, 2, 3])
    with pytest.raises(ProposalDropped, match="no leader"):
        r.propose(b"x")


# -- ReadIndex ---------------------------------------------------------------------
def test_read_index_on_leader_and_follower() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"w")
    net.flush()
    commit = net.nodes[1].log.committed
    net.nodes[1].read_index(b"r1")
    net.nodes[2].read_index(b"r2")
    net.flush()
    assert net.reads[1] == [(commit, b"r1")]
    assert net.reads[2] == [(commit, b"r2")]


def test_read_index_needs_quorum_ack() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.nodes[1].read_index(b"r")
    net.flush()
    assert net.reads[1] == []


# -- leadership transfer -----------------------------------------------------------
def test_transfer_to_lagging_follower_catches_it_up() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    for i in range(5):
        net.nodes[1].propose(b"%d" % i)
    net.flush()
    net.heal()
    net.nodes[1].transfer_leader(3)
    net.flush()
    net.tick(2)
    assert net.nodes[3].role == Role.LEADER
    assert len(net.applied[3]) == 5


def test_proposals_dropped_during_transfer() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    net.nodes[1].transfer_leader(3)
    net.flush()
    with pytest.raises(ProposalDropped, match="transfer"):
        net.nodes[1].propose(b"x")


# -- §6 membership -----------------------------------------------------------------
def _add(net: Net, nid: int, kind: ConfChangeType) -> None:
    if nid not in net.nodes:
        net.nodes[nid] = Raft(Config(nid), random.Random(nid))
        net.applied[nid] = []
        net.reads[nid] = []
    ld = net.leader()
    assert ld is not None
    ld.propose_conf_change(ConfChange(kind, nid))
    net.flush()
    net.tick(3)


def test_add_learner_then_promote() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"before")
    net.flush()
    _add(net, 4, ConfChangeType.ADD_LEARNER)
    assert net.nodes[1].learners == {4} and net.applied[4] == [b"before"]
    assert not net.nodes[4].promotable()
    _add(net, 4, ConfChangeType.ADD_NODE)
    assert net.nodes[1].voters == {1, 2, 3, 4}
    assert net.nodes[4].voters == {1, 2, 3, 4}


def test_quorum_follows_membership() -> None:
    net = Net(3)
    net.elect(1)
    _add(net, 4, ConfChangeType.ADD_NODE)
    net.isolate(3)
    net.isolate(4)
    net.nodes[1].propose(b"needs-3-of-4")
    net.flush()
    assert b"needs-3-of-4" not in net.applied[1]  # 1 and 2 are not a quorum of 4


def test_one_conf_change_at_a_time() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(1)
    net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 4))
    with pytest.raises(ProposalDropped, match="configuration change"):
        net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 5))


def test_removed_leader_steps_down_and_rest_elect() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    net.flush()
    assert net.nodes[1].role == Role.FOLLOWER and not net.nodes[1].promotable()
    net.tick(40)
    ld = net.leader()
    assert ld is not None and ld.id in (2, 3) and ld.voters == {2, 3}


# -- §7 log compaction ---------------------------------------------------------------
def test_lagging_follower_receives_snapshot() -> None:
    net = Net(3)
    net.elect(1)
    net.isolate(3)
    for i in range(20):
        net.nodes[1].propose(b"%d" % i)
    net.flush()
    ld = net.nodes[1]
    ld.compact(ld.log.applied, b"STATE", keep_entries=0)
    assert ld.log.first_index() > 5
    net.heal()
    snaps: list[Message] = []
    orig = net.nodes[3].step

    def spy(m: Message) -> None:
        if m.type == MsgType.SNAP:
            snaps.append(m)
        orig(m)

    net.nodes[3].step = spy  # type: ignore[method-assign]
    net.tick(3)
    assert snaps and snaps[0].snapshot is not None and snaps[0].snapshot.data == b"STATE"
    assert net.nodes[3].log.committed == ld.log.committed
    assert net.nodes[3].voters == {1, 2, 3}


def test_compact_must_be_at_applied_index() -> None:
    net = Net(3)
    net.elect(1)
    with pytest.raises(ValueError):
        net.nodes[1].compact(net.nodes[1].log.applied - 1, b"")


# -- Ready.must_sync: what must be fsync'd before messages leave -------------------
def _follower() -> Raft:
    """Node 2 of {1,2,3}, bootstrapped and with that first Ready persisted."""
    r = Raft(Config(2), random.Random(2))
    r.bootstrap([1, 2, 3])
    r.advance(r.ready())
    return r


def test_must_sync_for_new_entries() -> None:
    r = _follower()
    r.step(Message(MsgType.APP, frm=1, to=2, term=1, index=3, log_term=1, entries=[Entry(4, 1, data=b"x")], commit=3))
    rd = r.ready()
    assert [e.index for e in rd.entries] == [4]
    assert rd.hard_state is None or (rd.hard_state.term, rd.hard_state.vote) == (1, NONE)
    assert rd.must_sync
    r.advance(rd)


def test_must_sync_for_a_term_change() -> None:
    r = _follower()
    r.step(Message(MsgType.HEARTBEAT, frm=1, to=2, term=4, commit=3))
    rd = r.ready()
    assert not rd.entries and rd.hard_state is not None and rd.hard_state.term == 4
    assert rd.must_sync


def test_must_sync_for_a_vote_within_the_same_term() -> None:
    """The term was already durable (a stale candidate's request moved us to it); the vote alone must be too."""
    r = _follower()
    r.step(Message(MsgType.VOTE, frm=3, to=2, term=5, index=1, log_term=1))  # log behind ours: rejected
    rd = r.ready()
    assert [m.reject for m in rd.messages if m.type == MsgType.VOTE_RESP] == [True]
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (5, NONE)
    r.advance(rd)
    r.step(Message(MsgType.VOTE, frm=1, to=2, term=5, index=3, log_term=1))
    rd = r.ready()
    assert [m.reject for m in rd.messages if m.type == MsgType.VOTE_RESP] == [False]
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (5, 1)
    assert not rd.entries and rd.snapshot is None
    assert rd.must_sync


def test_must_sync_for_a_received_snapshot() -> None:
    r = _follower()
    snap = Snapshot(10, 2, ConfState(frozenset({1, 2, 3})), b"S")
    r.step(Message(MsgType.SNAP, frm=1, to=2, term=2, snapshot=snap))
    rd = r.ready()
    assert rd.snapshot is not None and rd.must_sync


def test_no_sync_for_a_commit_index_change_alone() -> None:
    r = _follower()
    r.step(Message(MsgType.APP, frm=1, to=2, term=2, index=3, log_term=1, entries=[Entry(4, 2, data=b"x")], commit=3))
    r.advance(r.ready())
    r.step(Message(MsgType.HEARTBEAT, frm=1, to=2, term=2, commit=4))
    rd = r.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 4 and rd.hard_state.term == 2
    assert not rd.entries and rd.snapshot is None
    assert [e.data for e in rd.committed_entries] == [b"x"]
    assert not rd.must_sync  # the commit index is recomputed after a crash: no fsync needed


# -- read-only views for the dashboard -------------------------------------------
def test_tail_terms_are_the_last_entries_terms_and_first_is_their_index() -> None:
    net = Net(3)
    net.elect(1)
    for i in range(5):
        net.nodes[1].propose(b"a%d" % i)
    net.flush()
    net.isolate(1)
    net.tick(45)  # 2 or 3 wins a new term, then entries in it
    new = net.leader()
    assert new is not None and new.id != 1
    for i in range(100):
        new.propose(b"b%d" % i)
    net.flush()
    for r in (net.nodes[2], net.nodes[3]):
        first, terms = r.tail_terms(64)
        assert len(terms) == 64 and first + 63 == r.log.last_index()
        assert terms == [r.log.term(i) for i in range(first, first + 64)], "each term is its entry's"
    first, terms = new.tail_terms(200)  # more than held: the whole in-memory log
    assert first == new.first_index() and terms[0] < terms[-1]
    empty = Raft(Config(9, election_tick=10), random.Random(1))
    assert empty.tail_terms(64) == (1, [])


def test_election_timer_is_the_randomized_timeout_and_a_leaders_check_quorum_period() -> None:
    net = Net(3)
    net.elect(1)
    f = net.nodes[2]
    net.tick(3, only=2)
    assert f.election_timer() == (3, f.randomized_timeout) and 10 <= f.randomized_timeout < 20
    lead = net.nodes[1]
    assert lead.election_timer()[1] == 10
