"""The real RaftNode Ready loop, driven with a recording data dir and a recording transport.

No processes and no sockets: the node's own `_run` loop handles every Ready batch,
while the storage and the transport below only write down, in one journal, what
was made durable (an fsync'd persist) and what was sent, in order. That is how
we can check what a process test cannot see: that a vote or an append reply never
leaves before the state it promises is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from node.api.admin_service import node_status
from node.api.compactor import Compactor
from node.errors import EtcdError, Reason
from node.kv import KVStateMachine
from node.kv.retention import Retention
from node.raft import NONE, Config, ConfState, Entry, HardState, Message, MsgType, Raft, Ready, Role, Snapshot
from node.raft.types import DropReason, ProposalDropped
from node.server.raftnode import EXIT_FATAL, NodeConfig, RaftNode
from node.server.snapshotter import pack_envelope
from node.storage import DiskFull


# -- recording parts -------------------------------------------------------------------------------
@dataclass
class Durable:
    """What a crash right now would keep: the synced hard state and entries."""

    term: int = 0
    vote: int = NONE
    entries: dict[int, int] = field(default_factory=dict)  # index -> term


class Journal:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.durable = Durable()
        self.events: list[tuple[Any, ...]] = []  # ("fsync", Durable copy) / ("send", Message, Durable copy)

    def synced(self, rd: Ready) -> None:
        with self.lock:
            d = self.durable
            if rd.snapshot is not None:
                d.entries = {}
            for e in rd.entries:
                for i in [i for i in d.entries if i >= e.index]:
                    del d.entries[i]  # a conflicting suffix is replaced
            for e in rd.entries:
                d.entries[e.index] = e.term
            if rd.hard_state is not None:
                d.term, d.vote = rd.hard_state.term, rd.hard_state.vote
            self.events.append(("fsync", Durable(d.term, d.vote, dict(d.entries))))

    def sent(self, m: Message) -> None:
        with self.lock:
            d = self.durable
            self.events.append(("send", m, Durable(d.term, d.vote, dict(d.entries))))

    def sends(self, *types: MsgType) -> list[tuple[Message, Durable]]:
        return [(e[1], e[2]) for e in self.events if e[0] == "send" and (not types or e[1].type in types)]


class RecordingStorage:
    """node.server's NodeStorage: 'persist' is durable when it returns (as DiskStorage's fsync)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.fail: list[BaseException] = []  # raised by the next persist calls, in order
        self.snap_fail: list[BaseException] = []
        self.persists = 0
        self.snapshots: list[tuple[Snapshot, int]] = []
        self.reserve = 0
        self.released = 0
        self.reserving = 0  # reserve_space calls in progress (worker threads)
        self.max_reserving = 0
        self.reserves_written = 0

    def persist(self, rd: Ready) -> None:
        self.persists += 1
        if self.fail:
            raise self.fail.pop(0)
        time.sleep(0.001)  # an fsync takes a while: a send racing it would show
        if rd.must_sync or rd.snapshot is not None:
            self.journal.synced(rd)

    def save_snapshot(self, snap: Snapshot, release_before: int) -> None:
        if self.snap_fail:
            raise self.snap_fail.pop(0)
        self.snapshots.append((snap, release_before))

    def reserve_space(self, nbytes: int) -> bool:
        with self.journal.lock:
            self.reserving += 1
            self.max_reserving = max(self.max_reserving, self.reserving)
        try:
            time.sleep(0.02)  # writing and fsyncing megabytes takes a while: an overlap would show
            if self.reserve != nbytes:
                self.reserve = nbytes
                self.reserves_written += 1
            return True
        finally:
            with self.journal.lock:
                self.reserving -= 1

    def release_reserve(self) -> int:
        freed, self.reserve = self.reserve, 0
        self.released += freed
        return freed

    def write_meta(self, meta: object) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingTransport:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.msgs_sent: dict[int, int] = {}  # as node.server.transport.Transport counts them
        self.msgs_recv: dict[int, int] = {}

    def send(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.journal.sent(m)
            self.msgs_sent[m.to] = self.msgs_sent.get(m.to, 0) + 1

    def set_peers(self, peers: dict[int, str]) -> None:
        pass

    def connected(self, peer: int) -> bool:
        return True

    async def close(self) -> None:
        pass


class ListSM:
    """A tiny state machine: the indexes it applied; snapshot_async can be held open."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.gate: asyncio.Event | None = None
        self.snapshot_calls = 0
        self.generation = 0
        self.apply_s = 0.0  # a slow apply (a big txn)
        self.seen: list[int] = []  # a probe's counter at each apply
        self.fail_on: bytes | None = None  # a payload whose apply raises (a bug in the state machine)

    probe = 0

    def apply(self, index: int, payload: bytes) -> Any:
        if payload == self.fail_on:
            raise KeyError("state machine bug")
        self.items.append(index)
        if self.apply_s:
            time.sleep(self.apply_s)
            self.seen.append(ListSM.probe)
        return len(self.items)

    def snapshot(self) -> bytes:
        return bytes(msgpack.packb(self.items))

    async def snapshot_async(self) -> bytes:
        self.snapshot_calls += 1
        state, gen = list(self.items), self.generation  # the state as of the call
        if self.gate is not None:
            await self.gate.wait()
        if gen != self.generation:
            raise RuntimeError("the store was replaced by a snapshot during the walk")  # as KVStateMachine
        return bytes(msgpack.packb(state))

    def restore(self, data: bytes) -> None:
        self.items = list(msgpack.unpackb(data))
        self.generation += 1


class Driven:
    """One RaftNode (member 1) whose real `_run` loop talks to the recording parts."""

    def __init__(self, voters: list[int], *, pre_vote: bool = False, **cfg: Any) -> None:
        self.journal = Journal()
        self.storage = RecordingStorage(self.journal)
        self.sm = ListSM()
        ncfg = NodeConfig(
            name="n1",
            data_dir=Path("/nonexistent"),
            listen_peer="127.0.0.1:1",
            listen_client="127.0.0.1:2",
            initial_cluster={"n1": "127.0.0.1:1"},
            **cfg,
        )
        self.node = RaftNode(ncfg, self.sm)
        self.node.member_id = 1
        self.free: int | None = 1 << 30  # what statvfs says is free in the data dir
        self.node.free_bytes = lambda: self.free  # type: ignore[method-assign]
        self.node.storage = self.storage
        self.node.transport = RecordingTransport(self.journal)  # type: ignore[assignment]
        raft = Raft(Config(1, election_tick=10, heartbeat_tick=1, pre_vote=pre_vote), random.Random(7), HardState())
        raft.bootstrap(voters)
        self.node.raft = raft
        self.fatal: list[BaseException] = []
        self.node.on_fatal = self.fatal.append
        self.task: asyncio.Task[None] | None = None

    @property
    def raft(self) -> Raft:
        assert self.node.raft is not None
        return self.node.raft

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.node._run())
        self.node._wake.set()  # the bootstrap entries are waiting in the first Ready

    def deliver(self, m: Message) -> None:
        t = self.node.transport
        assert isinstance(t, RecordingTransport)
        t.msgs_recv[m.frm] = t.msgs_recv.get(m.frm, 0) + 1
        self.node._deliver(m)

    async def settle(self, timeout: float = 3.0) -> None:
        """Until the loop has handled everything posted so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            if self.node._stopping or (not self.node._inbox and not self.raft.has_ready()):
                await asyncio.sleep(0.01)
                return
        raise AssertionError("the Ready loop did not settle")

    async def close(self) -> None:
        await self.node.stop(transfer=False)


@pytest.fixture
async def driven() -> Any:
    made: list[Driven] = []

    def make(voters: list[int], **kw: Any) -> Driven:
        d = Driven(voters, **kw)
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        await d.close()


Make = Callable[..., Driven]


async def elect(d: Driven) -> None:
    """Member 1 campaigns and wins term 2 with member 2's vote."""
    await d.settle()
    d.node.campaign()
    await d.settle()
    d.deliver(Message(MsgType.VOTE_RESP, to=1, frm=2, term=2))
    await d.settle()
    assert d.raft.role == Role.LEADER


def _check_sent_only_what_is_durable(j: Journal, me: int = 1) -> int:
    """Every vote, vote reply and append reply left only after what it promises was fsync'd."""
    checked = 0
    for m, d in j.sends():
        if m.type in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP):
            continue  # pre-votes promise nothing and change no state
        assert m.term <= d.term, f"{m.type.name} for term {m.term} sent while the durable term was {d.term}"
        if m.type == MsgType.VOTE:
            assert (d.term, d.vote) == (m.term, me), f"vote request sent before our own vote was durable: {d}"
            checked += 1
        elif m.type == MsgType.VOTE_RESP and not m.reject:
            assert (d.term, d.vote) == (m.term, m.to), f"vote granted to {m.to} before the vote was durable: {d}"
            checked += 1
        elif m.type == MsgType.APP_RESP and not m.reject:
            missing = [i for i in range(1, m.index + 1) if i not in d.entries]
            assert not missing, f"append reply up to {m.index} sent before entries {missing[:5]} were durable"
            checked += 1
    return checked


# -- persist before send ---------------------------------------------------------------------------
async def test_follower_vote_and_append_replies_leave_only_after_fsync(driven: Make) -> None:
    d = driven([1, 2, 3])
    await d.settle()  # the bootstrap entries (1..3, term 1) are persisted
    d.deliver(Message(MsgType.VOTE, to=1, frm=2, term=2, log_term=1, index=3))
    await d.settle()
    votes = d.journal.sends(MsgType.VOTE_RESP)
    assert votes and not votes[0][0].reject, votes
    ents = [Entry(4, 2, data=b"a"), Entry(5, 2, data=b"b")]
    d.deliver(Message(MsgType.APP, to=1, frm=2, term=2, log_term=1, index=3, entries=ents, commit=3))
    await d.settle()
    acks = [m for m, _ in d.journal.sends(MsgType.APP_RESP) if not m.reject]
    assert acks and acks[-1].index == 5, acks
    assert _check_sent_only_what_is_durable(d.journal) >= 2
    assert not d.fatal


async def test_candidate_vote_requests_leave_after_its_own_vote_is_durable(driven: Make) -> None:
    d = driven([1, 2, 3], pre_vote=True)
    await d.settle()
    d.node.campaign()
    await d.settle()
    assert d.journal.sends(MsgType.PRE_VOTE)
    d.deliver(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=2))
    await d.settle()
    assert d.raft.role == Role.CANDIDATE
    assert len(d.journal.sends(MsgType.VOTE)) == 2
    assert _check_sent_only_what_is_durable(d.journal) == 2


async def test_leader_appends_go_out_while_it_persists(driven: Make) -> None:
    """The leader may send its appends before its own fsync (thesis §10.2.1): that is the speed-up."""
    d = driven([1, 2, 3])
    await elect(d)
    early = [
        (m, dur)
        for m, dur in d.journal.sends(MsgType.APP)
        if m.entries and any(e.index not in dur.entries for e in m.entries)
    ]
    assert early, "the leader waited for its own fsync before sending appends"
    _check_sent_only_what_is_durable(d.journal)


# -- failures are loud ----------------------------------------------------------------------------
async def test_disk_full_releases_the_reserve_raises_the_hook_and_retries(driven: Make) -> None:
    d = driven([1, 2, 3])
    await d.settle()
    d.storage.reserve = 8 << 20
    hooks: list[bool] = []
    d.node.on_disk_full.append(lambda: hooks.append(True))
    d.storage.fail = [DiskFull("No space left on device")]
    d.deliver(Message(MsgType.VOTE, to=1, frm=2, term=2, log_term=1, index=3))
    await d.settle()
    assert d.storage.released == 8 << 20
    assert d.node.disk_full and hooks == [True]
    assert node_status(d.node)["disk_full"] is True
    votes = d.journal.sends(MsgType.VOTE_RESP)
    assert votes and not votes[0][0].reject  # the retried persist succeeded: the node carries on
    _check_sent_only_what_is_durable(d.journal)
    assert not d.fatal
    # the alarm is disarmed once space is back: the reserve is re-created first
    assert await d.node.try_clear_disk_full() and not d.node.disk_full and d.storage.reserve == 8 << 20
    d.storage.fail = [DiskFull("again")]
    d.deliver(Message(MsgType.VOTE, to=1, frm=3, term=3, log_term=1, index=3))
    await d.settle()
    assert hooks == [True, True]  # called on every False -> True transition


async def test_disk_full_twice_in_a_row_is_fatal(driven: Make, caplog: pytest.LogCaptureFixture) -> None:
    d = driven([1, 2, 3])
    await d.settle()
    d.storage.fail = [DiskFull("No space left on device"), DiskFull("still no space")]
    with caplog.at_level(logging.CRITICAL, logger="quorumlab.node"):
        d.deliver(Message(MsgType.VOTE, to=1, frm=2, term=2, log_term=1, index=3))
        await d.settle()
    assert len(d.fatal) == 1 and isinstance(d.fatal[0], DiskFull)
    assert not d.journal.sends(MsgType.VOTE_RESP)  # nothing promised that is not on disk
    assert any(r.levelno == logging.CRITICAL and r.exc_info for r in caplog.records)


async def test_other_storage_errors_are_fatal_at_once_with_the_traceback(
    driven: Make, caplog: pytest.LogCaptureFixture
) -> None:
    d = driven([1, 2, 3])
    await d.settle()
    d.storage.fail = [OSError(errno.EIO, "Input/output error")]
    before = d.storage.persists
    with caplog.at_level(logging.CRITICAL, logger="quorumlab.node"):
        d.deliver(Message(MsgType.VOTE, to=1, frm=2, term=2, log_term=1, index=3))
        await d.settle()
    assert len(d.fatal) == 1 and isinstance(d.fatal[0], OSError)
    assert d.storage.persists == before + 1  # no retry: only a full disk is worth one
    assert d.node.fatal_error is d.fatal[0] and d.node._stopping
    rec = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert rec and rec[0].exc_info and "Input/output error" in rec[0].getMessage()


async def test_a_bug_in_the_raft_loop_is_fatal_but_a_dropped_proposal_is_not(driven: Make) -> None:
    d = driven([1, 2, 3])
    await d.settle()
    # no leader yet: ReadIndex is dropped (expected, documented), the loop carries on
    d.node._post(lambda: d.raft.read_index(b"ctx"))
    await d.settle()
    assert not d.fatal and not d.node._stopping
    # a call Raft refuses as a bug (compacting beyond the applied index) ends the member
    d.node._post(lambda: d.raft.compact(99, b""))
    await d.settle()
    assert len(d.fatal) == 1 and isinstance(d.fatal[0], ValueError) and "99" in str(d.fatal[0])


async def test_an_exception_from_raft_step_is_fatal(driven: Make, caplog: pytest.LogCaptureFixture) -> None:
    """An append that would overwrite a committed entry (a broken leader) makes the core raise: never swallowed."""
    d = driven([1, 2, 3])
    await d.settle()  # the bootstrap entries 1..3 (term 1) are committed
    with caplog.at_level(logging.CRITICAL, logger="quorumlab.node"):
        d.deliver(Message(MsgType.APP, to=1, frm=2, term=2, log_term=1, index=3, entries=[Entry(3, 2, data=b"x")]))
        await d.settle()
    assert len(d.fatal) == 1 and "conflicts with committed" in str(d.fatal[0])
    assert d.node._stopping and not d.journal.sends(MsgType.APP_RESP)
    assert any(r.levelno == logging.CRITICAL and r.exc_info for r in caplog.records)


async def test_an_exception_from_a_hook_in_the_ready_loop_is_fatal(driven: Make) -> None:
    d = driven([1])
    await d.settle()

    def hook(old: int, new: int) -> None:
        if new == 1:
            raise RuntimeError("lessor bug")

    d.node.on_leader_change.append(hook)
    d.node.campaign()
    await _until(lambda: bool(d.fatal))
    assert "lessor bug" in str(d.fatal[0])
    with pytest.raises(EtcdError, match="server stopped"):
        await d.node.propose(b"x", timeout=1.0)


async def test_an_exception_from_the_state_machines_apply_is_fatal(
    driven: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """apply turns expected refusals into results; whatever it raises is a bug that would let this
    member's state drift from the others', so it ends the process like any other bug in the loop
    (exit 70), and the proposer is told the server stopped, not handed the bug."""
    d = driven([1])
    await _leader(d)
    assert await d.node.propose(b"ok", timeout=2.0) == 1  # results come back as they are
    d.sm.fail_on = b"boom"
    with pytest.raises(EtcdError) as ei:
        await d.node.propose(b"boom", timeout=2.0)
    assert ei.value.reason is Reason.STOPPED and str(ei.value) == "etcdserver: server stopped"
    assert len(d.fatal) == 1 and isinstance(d.fatal[0], KeyError) and d.node._stopping
    assert any("while applying entry" in n for n in getattr(d.fatal[0], "__notes__", []))
    rec = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert rec and rec[0].exc_info and f"exit code {EXIT_FATAL}" in rec[0].getMessage()
    with pytest.raises(EtcdError, match="server stopped"):
        await d.node.propose(b"after", timeout=1.0)


async def test_a_dropped_proposal_is_refused_with_etcds_text_by_its_reason(
    driven: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = driven([1])
    await _leader(d)

    def dropped(data: bytes) -> None:
        raise ProposalDropped(DropReason.LEADERSHIP_TRANSFER)

    monkeypatch.setattr(d.raft, "propose", dropped)
    with pytest.raises(EtcdError) as ei:
        await d.node.propose(b"x", timeout=2.0)
    assert ei.value.reason is Reason.LEADERSHIP_TRANSFER
    assert str(ei.value) == "etcdserver: leadership transfer in progress"
    assert not d.fatal


# -- snapshots in the background ------------------------------------------------------------------
async def _propose_n(d: Driven, n: int, tag: str) -> None:
    for i in range(n):
        await d.node.propose(f"{tag}{i}".encode(), timeout=2.0)


async def _until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def _leader(d: Driven) -> None:
    await d.settle()
    d.node.campaign()
    await _until(lambda: d.node.lead == 1)


async def test_snapshot_runs_in_the_background_one_at_a_time(driven: Make) -> None:
    d = driven([1], snapshot_count=20, snapshot_catchup_entries=5)
    await _leader(d)
    d.sm.gate = asyncio.Event()
    await _propose_n(d, 25, "a")
    await _until(lambda: d.sm.snapshot_calls == 1)
    # while the state machine is still packing, writes keep committing and no second snapshot starts
    await asyncio.wait_for(_propose_n(d, 40, "b"), 5.0)
    assert d.sm.snapshot_calls == 1 and not d.storage.snapshots
    d.sm.gate.set()
    await _until(lambda: bool(d.storage.snapshots))
    snap, release_before = d.storage.snapshots[0]
    assert snap.conf.voters == frozenset({1})
    blob = msgpack.unpackb(snap.data)
    # the snapshot holds the state as of the moment it started, labelled with that index
    assert msgpack.unpackb(blob["app"]) == [i for i in d.sm.items if i <= snap.index]
    assert snap.index < d.raft.log.applied
    assert d.node.snapshotter.last_index == snap.index and d.raft.log.snapshot.index == snap.index
    assert release_before == d.raft.log.offset + 1 == snap.index - 5 + 1
    # the next one starts after more applies (the backlog is already >= snapshot_count)
    await _propose_n(d, 1, "c")
    await _until(lambda: len(d.storage.snapshots) == 2)
    assert d.storage.snapshots[1][0].index > snap.index


async def test_snapshot_disk_full_keeps_serving_other_errors_are_fatal(driven: Make) -> None:
    d = driven([1], snapshot_count=10, snapshot_catchup_entries=5)
    await _leader(d)
    hooks: list[bool] = []
    d.node.on_disk_full.append(lambda: hooks.append(True))
    d.storage.snap_fail = [DiskFull("No space left on device")]
    await _propose_n(d, 12, "a")
    await _until(lambda: bool(hooks))
    assert d.node.disk_full and not d.fatal
    await _propose_n(d, 3, "b")  # still serving
    d.storage.snap_fail = [PermissionError(errno.EPERM, "Operation not permitted")]
    await _until(lambda: d.node.snapshotter.task is None)
    with contextlib.suppress(EtcdError):
        await _propose_n(d, 12, "c")  # the member stops while these are in flight
    await _until(lambda: bool(d.fatal))
    assert isinstance(d.fatal[0], PermissionError)


async def test_snapshot_disk_full_releases_the_reserve_and_disarm_needs_real_free_space(driven: Make) -> None:
    """A snapshot that hits a full disk frees the reserve as the WAL path does; a disarm clears
    disk_full only when the filesystem really has room, not because reserve.bin exists."""
    d = driven([1], snapshot_count=10, snapshot_catchup_entries=5)
    await _leader(d)
    d.storage.reserve = 8 << 20
    d.storage.snap_fail = [DiskFull("No space left on device")]
    await _propose_n(d, 12, "a")
    await _until(lambda: d.node.disk_full)
    await _until(lambda: d.node.snapshotter.task is None)
    assert d.storage.released == 8 << 20 and d.storage.reserve == 0
    # the reserve can be written again (a few MB were freed elsewhere) but the disk is still
    # full around it: not cleared
    d.free = 4096
    assert not await d.node.try_clear_disk_full()
    assert d.node.disk_full and d.storage.reserve == 8 << 20
    # the reserve is in place already: its presence alone must not clear the flag either
    assert not await d.node.try_clear_disk_full()
    assert d.node.disk_full
    d.free = None  # statvfs failed: unknown is not "room"
    assert not await d.node.try_clear_disk_full()
    d.free = 64 << 20
    assert await d.node.try_clear_disk_full() and not d.node.disk_full
    assert not d.fatal


async def test_disarms_in_a_row_recreate_the_reserve_one_at_a_time(driven: Make) -> None:
    """Two applied disarms each start a clear: they must not write reserve.bin.tmp at once."""
    d = driven([1])
    await d.settle()
    d.node.disk_full = True
    results = await asyncio.gather(*(d.node.try_clear_disk_full() for _ in range(3)))
    assert all(results) and not d.node.disk_full
    assert d.storage.max_reserving == 1, "reserve_space ran concurrently"
    assert d.storage.reserves_written == 1


def test_free_bytes_reads_the_data_dirs_filesystem(tmp_path: Path) -> None:
    cfg = NodeConfig(
        name="n1",
        data_dir=tmp_path,
        listen_peer="127.0.0.1:1",
        listen_client="127.0.0.1:2",
        initial_cluster={"n1": "127.0.0.1:1"},
    )
    node = RaftNode(cfg, ListSM())
    free = node.free_bytes()
    st = os.statvfs(tmp_path)
    assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 64 << 20
    node.cfg.data_dir = tmp_path / "missing"
    assert node.free_bytes() is None


def test_snapshot_envelope_is_the_same_msgpack_map() -> None:
    members = [[1, "n1", ["http://127.0.0.1:1"], ["http://127.0.0.1:2"], False]]
    for n in (0, 5, 255, 256, 65535, 65536, 300_000):
        app = bytes(range(256)) * (n // 256) + b"z" * (n % 256)
        data = pack_envelope(members, app)
        assert data == msgpack.packb({"members": members, "app": app}), n
        blob = msgpack.unpackb(data)
        assert blob == {"members": members, "app": app}


def test_packing_a_large_snapshot_lets_other_threads_run() -> None:
    """The envelope is packed on a worker thread; copying the state must not hold the GIL
    (msgpack.packb did, for about a second per 100 MB, with the event loop stuck behind it)."""
    app = bytes(128 << 20)
    done = threading.Event()
    out: list[bytes] = []

    def pack() -> None:
        out.append(pack_envelope([], app))
        done.set()

    t = threading.Thread(target=pack)
    worst, last = 0.0, time.perf_counter()
    t.start()
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    t.join()
    assert len(out[0]) == len(app) + 19  # map, "members", [], "app", bin32 header
    assert worst < 0.15, f"the main thread was held for {worst * 1000:.0f} ms while the snapshot was packed"


async def test_compactor_stop_waits_for_its_task(tmp_path: Path) -> None:
    cfg = NodeConfig(
        name="n1",
        data_dir=tmp_path,
        listen_peer="127.0.0.1:1",
        listen_client="127.0.0.1:2",
        initial_cluster={"n1": "127.0.0.1:1"},
    )
    sm = KVStateMachine()
    comp = Compactor(RaftNode(cfg, sm), sm, Retention("revision", revisions=5))
    comp.start()
    task = comp._task
    assert task is not None
    await asyncio.sleep(0)
    await comp.stop()
    assert task.done(), "stop() returned while the compactor task was still running"


async def test_a_snapshot_from_the_leader_during_ours_abandons_ours(driven: Make) -> None:
    d = driven([1, 2, 3], snapshot_count=3, snapshot_catchup_entries=1)
    d.sm.gate = asyncio.Event()
    await _until(lambda: d.sm.snapshot_calls == 1)  # the 3 bootstrap entries started one
    app = msgpack.packb([1, 2, 3, 7])
    data = msgpack.packb({"members": [], "app": app})
    snap = Snapshot(10, 2, ConfState(frozenset({1, 2, 3})), data)
    d.deliver(Message(MsgType.SNAP, to=1, frm=2, term=2, snapshot=snap))
    await d.settle()
    assert d.sm.items == [1, 2, 3, 7] and d.node.applied == 10
    d.sm.gate.set()
    await _until(lambda: d.node.snapshotter.task is None)
    assert not d.fatal and not d.storage.snapshots
    assert d.raft.log.snapshot.index == 10


async def test_a_backlog_of_slow_applies_lets_the_event_loop_run_in_between(driven: Make) -> None:
    """A Ready full of big txns used to be applied in one go, holding heartbeats behind it."""
    d = driven([1])
    await _leader(d)
    d.sm.apply_s = 0.003

    async def probe() -> None:
        while True:
            ListSM.probe += 1
            await asyncio.sleep(0)

    t = asyncio.get_running_loop().create_task(probe())
    try:
        await asyncio.gather(*(d.node.propose(b"x", timeout=5.0) for _ in range(40)))
    finally:
        t.cancel()
    seen = d.sm.seen
    assert len(seen) == 40
    # the other coroutines ran while the 120 ms of applies were being worked off
    assert len(set(seen)) >= 40 * 0.003 / 0.01 - 2, seen


async def test_node_status_reports_loop_stalls_and_stays_cheap(driven: Make) -> None:
    d = driven([1])
    await _leader(d)
    d.node.loopmon.start()
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.15)  # block the loop the way a big synchronous pack would
        await asyncio.sleep(0.1)
        st = node_status(d.node)
        assert 100 <= st["loop_stall_max_ms"] < 1000, st
        assert st["loop_stall_max_total_ms"] >= st["loop_stall_max_ms"]
        assert st["loop_stall_p99_ms"] <= st["loop_stall_max_ms"]
        t0 = time.perf_counter()
        for _ in range(200):
            node_status(d.node)
        assert (time.perf_counter() - t0) / 200 < 0.002
    finally:
        d.node.loopmon.stop()


async def test_node_status_raft_detail_matches_the_log_and_counts_messages(driven: Make) -> None:
    d = driven([1, 2, 3])
    await d.settle()
    d.node.campaign()
    await _until(lambda: len(d.journal.sends(MsgType.VOTE)) == 2)
    st = node_status(d.node)["raft"]
    assert st["msgs_sent"] == {"2": 1, "3": 1} and st["msgs_recv"] == {}, "one vote request to each, by name"
    assert st["election_timeout_ms"] == d.raft.election_timer()[1] * 100.0
    term = d.raft.term
    for peer in (2, 3):
        d.deliver(Message(MsgType.VOTE_RESP, frm=peer, to=1, term=term))
    await _until(lambda: d.node.lead == 1)
    for i in range(80):  # more entries than the view holds
        d.node._post(functools.partial(d.raft.propose, b"x%d" % i))
    await d.settle()
    st = node_status(d.node)["raft"]
    first, terms = st["log_first"], st["log_terms"]
    assert len(terms) == 64 and first + 63 == d.raft.log.last_index()
    assert terms == [d.raft.log.term(i) for i in range(first, first + 64)] and terms[-1] == d.raft.term
    assert st["msgs_recv"] == {"2": 1, "3": 1}
    assert st["msgs_sent"]["2"] >= 2 and st["election_timeout_ms"] == 1000.0  # the leader's check-quorum period
